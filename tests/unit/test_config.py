"""Config: embedded defaults, TOML file, ORRERY_* overrides, and errors that name the variable."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import msgspec
import pytest

from orrery.config import Config, ConfigError, env_var, load_config

PG = "postgresql://postgres:s3cret@127.0.0.1:5432/orrery"


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "orrery.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_embedded_mode() -> None:
    """With no file and no variables the config runs all-in-one on SQLite and the memory bus."""
    config = load_config(env={})
    assert config == Config()
    assert config.embedded_store and config.embedded_bus
    assert config.sqlite_path == "./var/orrery.sqlite"
    assert (config.shards, config.api_port, config.log_format) == (8, 8080, "console")


def test_env_vars_override_and_convert_by_field_type() -> None:
    """ORRERY_<FIELD> strings become the field's int, float or bool."""
    env = {
        "ORRERY_DATABASE_URL": PG,
        "ORRERY_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
        "ORRERY_SHARDS": "16",
        "ORRERY_PASSIVATE_AFTER": "2.5",
        "ORRERY_REQUIRE_SERVICES": "1",
        "ORRERY_LOG_FORMAT": "json",
    }
    config = load_config(env=env)
    assert config.shards == 16 and config.passivate_after == 2.5
    assert config.require_services is True and config.log_format == "json"
    assert not config.embedded_store and not config.embedded_bus


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("Yes", True), ("on", True), ("0", False), ("off", False), ("NO", False)],
)
def test_bool_variables_accept_common_spellings(text: str, expected: bool) -> None:
    """Booleans accept true/false, 1/0, yes/no and on/off in any case."""
    assert load_config(env={"ORRERY_REQUIRE_SERVICES": text}).require_services is expected


def test_log_level_is_case_insensitive() -> None:
    """ORRERY_LOG_LEVEL=DEBUG is read as debug."""
    assert load_config(env={"ORRERY_LOG_LEVEL": "DEBUG"}).log_level == "debug"


def test_empty_variable_counts_as_unset() -> None:
    """An empty ORRERY_* value leaves the default (or file value) in place."""
    assert load_config(env={"ORRERY_SHARDS": "", "ORRERY_BUS_PREFIX": " "}) == Config()


def test_toml_file_sets_fields_and_env_beats_it(tmp_path: Path) -> None:
    """Values come from the TOML file unless an ORRERY_* variable overrides them."""
    path = write_toml(tmp_path, 'shards = 4\napi_port = 9000\nbus_prefix = "lab"\n')
    config = load_config(env={"ORRERY_API_PORT": "9100"}, path=path)
    assert (config.shards, config.api_port, config.bus_prefix) == (4, 9100, "lab")


def test_orrery_config_variable_names_the_file(tmp_path: Path) -> None:
    """ORRERY_CONFIG points at the TOML file when no path is passed."""
    path = write_toml(tmp_path, "snapshot_every = 7\n")
    assert load_config(env={"ORRERY_CONFIG": path}).snapshot_every == 7


def test_explicit_path_wins_over_orrery_config(tmp_path: Path) -> None:
    """A path argument is used instead of the file named by ORRERY_CONFIG."""
    chosen = write_toml(tmp_path, "shards = 3\n")
    other = tmp_path / "other.toml"
    other.write_text("shards = 5\n")
    assert load_config(env={"ORRERY_CONFIG": str(other)}, path=chosen).shards == 3


def test_load_config_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an env mapping, os.environ is read."""
    monkeypatch.setenv("ORRERY_COMMAND_MAX_ATTEMPTS", "9")
    assert load_config().command_max_attempts == 9


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ORRERY_SHARDS", "many"),
        ("ORRERY_SHARDS", "0"),
        ("ORRERY_API_PORT", "70000"),
        ("ORRERY_PASSIVATE_AFTER", "-1"),
        ("ORRERY_REQUIRE_SERVICES", "maybe"),
        ("ORRERY_LOG_FORMAT", "xml"),
        ("ORRERY_LOG_LEVEL", "loud"),
        ("ORRERY_DATABASE_URL", "mysql://db/orrery"),
        ("ORRERY_DATABASE_URL", "sqlite:///"),
        ("ORRERY_AMQP_URL", "kafka://broker"),
        ("ORRERY_BUS_PREFIX", "has space"),
    ],
)
def test_bad_env_value_raises_config_error_naming_the_variable(variable: str, value: str) -> None:
    """A value that does not fit its field is refused with the variable's name in the error."""
    with pytest.raises(ConfigError) as caught:
        load_config(env={variable: value})
    assert caught.value.source == variable
    assert str(caught.value).startswith(variable + ": ")


def test_bad_file_value_names_the_file_and_key(tmp_path: Path) -> None:
    """A bad value in the TOML file is reported as '<file>: <key>'."""
    path = write_toml(tmp_path, 'shards = "lots"\n')
    with pytest.raises(ConfigError, match="shards") as caught:
        load_config(env={}, path=path)
    assert caught.value.source == f"{path}: shards"


def test_unknown_file_key_is_refused(tmp_path: Path) -> None:
    """A misspelt key in the TOML file is an error, not silently ignored."""
    path = write_toml(tmp_path, "shard = 4\n")
    with pytest.raises(ConfigError, match="unknown keys \\['shard'\\]"):
        load_config(env={}, path=path)


def test_missing_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    """An unreadable or non-TOML config file raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(env={}, path=str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(env={}, path=write_toml(tmp_path, "shards = = 4\n"))


def test_config_is_frozen() -> None:
    """A loaded Config cannot be changed in place."""
    config = load_config(env={})
    with pytest.raises(AttributeError):
        config.shards = 2  # type: ignore[misc]


def test_worker_id_defaults_to_hostname_and_pid() -> None:
    """An empty worker_id resolves to <hostname>-<pid>; a set one is kept."""
    assert Config().resolved_worker_id == f"{socket.gethostname()}-{os.getpid()}"
    assert load_config(env={"ORRERY_WORKER_ID": "w7"}).resolved_worker_id == "w7"


def test_redacted_masks_url_passwords() -> None:
    """The loggable form of the config hides passwords but keeps user, host and port."""
    values = load_config(env={"ORRERY_DATABASE_URL": PG}).redacted()
    assert values["database_url"] == "postgresql://postgres:***@127.0.0.1:5432/orrery"
    assert values["amqp_url"] == "memory://"


def test_sqlite_path_refused_for_postgres() -> None:
    """sqlite_path only makes sense for an embedded store."""
    with pytest.raises(ValueError, match="not a sqlite"):
        _ = Config(database_url=PG).sqlite_path


def test_every_field_is_settable_from_its_variable() -> None:
    """Each field is read from ORRERY_<FIELD upper>, so the README's table is complete."""
    env = {
        "database_url": PG, "amqp_url": "amqps://u:p@mq/", "bus_prefix": "b1", "shards": "2",
        "data_dir": "/srv/o", "api_host": "0.0.0.0", "api_port": "1", "metrics_port": "2",
        "log_level": "error", "log_format": "json", "worker_id": "w", "require_services": "1",
        "passivate_after": "3", "snapshot_every": "4", "command_max_attempts": "6",
        "network_vni_ranges": "100:200", "network_vlan_ranges": "phys2:10:20",
        "network_flat_networks": "phys2", "network_tenant_type": "vlan",
        "network_mtu": "9000", "network_hold_lease": "30", "events_heartbeat": "2",
        "webhooks_allow_loopback": "1", "webhooks_allow_private": "yes",
        "webhooks_timeout": "3", "webhooks_retry_base": "0.5", "webhooks_retry_period": "60",
        "webhooks_retention": "3600",
        "volume_format": "QCOW2",
    }
    config = load_config(env={env_var(field): value for field, value in env.items()})
    loaded = msgspec.structs.asdict(config)
    assert sorted(loaded) == sorted(env)
    defaults = msgspec.structs.asdict(Config())
    assert all(loaded[field] != default for field, default in defaults.items())


@pytest.mark.parametrize("field, value", [
    ("network_vni_ranges", "5:1"), ("network_vni_ranges", "a:b"),
    ("network_vlan_ranges", "100:200"), ("network_vlan_ranges", ":1:2"),
])
def test_bad_segment_ranges_are_refused(field: str, value: str) -> None:
    """Segmentation ranges must read lo:hi (vni) or physnet:lo:hi (vlan), lo <= hi."""
    with pytest.raises(ConfigError, match=env_var(field)):
        load_config(env={env_var(field): value})


def test_the_readme_documents_every_field() -> None:
    """The README's configuration table has a row for every field's variable."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in readme.splitlines()
            if line.startswith("| `ORRERY_")}
    assert {env_var(field) for field in Config.__struct_fields__} <= rows
