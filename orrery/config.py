"""Configuration: embedded defaults, an optional TOML file, then ORRERY_* environment variables.

Precedence, lowest first: the defaults of `Config` (embedded mode: SQLite log, in-process
bus), the TOML file named by the `path` argument or ORRERY_CONFIG (top-level keys are the
field names), then one environment variable per field, ``ORRERY_<FIELD>`` (an empty value
counts as unset). Every bad value raises `ConfigError` naming where it came from.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = ["ENV_PREFIX", "Config", "ConfigError", "env_var", "load_config"]

ENV_PREFIX = "ORRERY_"
CONFIG_ENV = "ORRERY_CONFIG"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["console", "json"]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]


class ConfigError(ValueError):
    """A configuration value that cannot be used; `source` names the variable or file key."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a process needs to wire itself; the defaults run all-in-one on one laptop."""

    database_url: str = "sqlite:///./var/orrery.sqlite"
    amqp_url: str = "memory://"
    bus_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")] = "orrery"
    shards: AtLeastOne = 8
    data_dir: Annotated[str, msgspec.Meta(min_length=1)] = "./var"
    api_host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    api_port: Port = 8080
    metrics_port: Port = 0
    log_level: LogLevel = "info"
    log_format: LogFormat = "console"
    worker_id: str = ""
    require_services: bool = False
    passivate_after: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    snapshot_every: AtLeastOne = 100
    command_max_attempts: AtLeastOne = 5
    #: Networking: tenant segmentation ranges as Neutron writes them (vni_ranges
    #: ``1:1000,2000:2100``; network_vlan_ranges ``physnet1:100:199``), the physical
    #: networks flat networks may use, the type a member's network gets, the MTU of the
    #: physical networks (VXLAN networks get 50 less) and how long an address handed out
    #: may wait for its port before the pool asks the port about it.
    network_vni_ranges: str = "1:65535"
    network_vlan_ranges: str = "physnet1:1:4094"
    network_flat_networks: str = "physnet1"
    network_tenant_type: Literal["vxlan", "vlan", "flat"] = "vxlan"
    network_mtu: Annotated[int, msgspec.Meta(ge=1280, le=9216)] = 1500
    network_hold_lease: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    #: The event feed and webhooks: the SSE heartbeat; which destinations webhooks may
    #: reach (loopback, private ranges; link-local never); a delivery's request timeout,
    #: its first retry's delay (doubling, with jitter) and how long it is retried; how long
    #: attempt records are kept.
    events_heartbeat: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    webhooks_allow_loopback: bool = False
    webhooks_allow_private: bool = False
    webhooks_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    webhooks_retry_base: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    webhooks_retry_period: Annotated[float, msgspec.Meta(gt=0)] = 86_400.0
    webhooks_retention: Annotated[float, msgspec.Meta(gt=0)] = 604_800.0
    #: Block storage: the format of the files a storage host makes new volumes in.
    volume_format: Literal["raw", "qcow2"] = "raw"

    @property
    def embedded_store(self) -> bool:
        """True when the event log is the embedded SQLite file rather than PostgreSQL."""
        return self.database_url.startswith("sqlite")

    @property
    def embedded_bus(self) -> bool:
        """True when the bus is the in-process one rather than RabbitMQ."""
        return self.amqp_url.startswith("memory")

    @property
    def sqlite_path(self) -> str:
        """The file path of an embedded store (``sqlite:////abs`` gives ``/abs``)."""
        if not self.embedded_store:
            raise ValueError("sqlite_path: database_url is not a sqlite:/// URL")
        return self.database_url.removeprefix("sqlite:///")

    @property
    def resolved_worker_id(self) -> str:
        """`worker_id`, or ``<hostname>-<pid>`` when it is left empty."""
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with URL passwords masked, fit for a startup log line."""
        values: dict[str, Any] = msgspec.structs.asdict(self)
        for name in ("database_url", "amqp_url"):
            values[name] = _mask_password(values[name])
        return values


FIELDS: tuple[str, ...] = Config.__struct_fields__
_TYPES: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(Config)}
_SCHEMES: dict[str, tuple[str, ...]] = {
    "database_url": ("sqlite:///", "postgresql://", "postgres://"),
    "amqp_url": ("memory://", "amqp://", "amqps://"),
}
_LOWERCASE = frozenset({"log_level", "log_format", "volume_format"})
_BOOL_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}


def env_var(field: str) -> str:
    """The environment variable that sets `field` (``shards`` -> ``ORRERY_SHARDS``)."""
    return ENV_PREFIX + field.upper()


def load_config(env: Mapping[str, str] | None = None, path: str | None = None) -> Config:
    """Build a `Config` from defaults, then the TOML file, then ORRERY_* variables in `env`.

    `env` defaults to ``os.environ``; `path` defaults to ``$ORRERY_CONFIG`` (no file if unset).
    """
    environ = os.environ if env is None else env
    file_path = path or environ.get(CONFIG_ENV) or None
    raw: dict[str, tuple[str, Any]] = {}
    if file_path is not None:
        for key, value in _read_toml(file_path).items():
            raw[key] = (f"{file_path}: {key}", value)
    for field in FIELDS:
        value = environ.get(env_var(field), "")
        if value.strip():
            raw[field] = (env_var(field), value.strip())
    values = {field: _convert(field, source, value) for field, (source, value) in raw.items()}
    return Config(**values)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(path, f"cannot read config file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(path, f"unknown keys {unknown}; known keys are {list(FIELDS)}")
    return data


def _convert(field: str, source: str, value: Any) -> Any:
    value = _normalise(field, value)
    try:
        converted = msgspec.convert(value, _TYPES[field], strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(source, f"{exc} (got {value!r})") from exc
    check = _CHECKS.get(field)
    problem = check(field, converted) if check else None
    if problem:
        raise ConfigError(source, f"{problem} (got {_mask_password(str(converted))!r})")
    return converted


def _normalise(field: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if field in _LOWERCASE:
        return value.lower()
    if _TYPES[field] is bool:
        return _BOOL_WORDS.get(value.lower(), value.lower())
    return value


def _check_scheme(field: str, url: str) -> str | None:
    schemes = _SCHEMES[field]
    if not url.startswith(schemes):
        return f"must start with one of {', '.join(schemes)}"
    if url.startswith("sqlite:///") and not url.removeprefix("sqlite:///"):
        return "sqlite:/// needs a file path, e.g. sqlite:///./var/orrery.sqlite"
    return None


def _check_ranges(field: str, text: str) -> str | None:
    """``lo:hi,...`` (vni) or ``physnet:lo:hi,...`` (vlan) with lo <= hi."""
    for item in filter(None, (p.strip() for p in text.split(","))):
        parts = item.split(":")
        bounds = parts[1:] if field == "network_vlan_ranges" else parts
        if len(bounds) != 2 or not all(b.isdigit() for b in bounds) \
                or int(bounds[0]) > int(bounds[1]) or int(bounds[0]) < 1 \
                or (field == "network_vlan_ranges" and not parts[0]):
            form = "physnet:lo:hi" if field == "network_vlan_ranges" else "lo:hi"
            return f"each range must be {form} with 1 <= lo <= hi"
    return None


_CHECKS: dict[str, Callable[[str, Any], str | None]] = {
    "database_url": _check_scheme,
    "amqp_url": _check_scheme,
    "network_vni_ranges": _check_ranges,
    "network_vlan_ranges": _check_ranges,
}


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
