"""The clouds.yaml `orrery up` writes: the admin password of the first start is kept by
every restart (which does not know it), so the file goes on working."""

from __future__ import annotations

from pathlib import Path

from orrery.clouds import PLACEHOLDER, write_clouds_yaml, written_password


def test_a_restart_keeps_the_password_the_first_start_wrote(tmp_path: Path) -> None:
    path = write_clouds_yaml(tmp_path, "http://127.0.0.1:8080", "first-secret")
    assert written_password(path) == "first-secret" and oct(path.stat().st_mode)[-3:] == "600"
    write_clouds_yaml(tmp_path, "http://127.0.0.1:9090", None)  # a restart, another port
    text = path.read_text()
    assert "password: first-secret" in text and "http://127.0.0.1:9090/identity" in text
    write_clouds_yaml(tmp_path, "http://127.0.0.1:9090", "given-again")
    assert written_password(path) == "given-again"


def test_without_any_password_the_file_says_what_is_missing(tmp_path: Path) -> None:
    path = write_clouds_yaml(tmp_path, "http://127.0.0.1:8080", None)
    assert f"password: {PLACEHOLDER}" in path.read_text() and written_password(path) is None
    write_clouds_yaml(tmp_path, "http://127.0.0.1:8080", None)
    assert written_password(path) is None
