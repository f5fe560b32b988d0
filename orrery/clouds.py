"""The clouds.yaml that `orrery up` writes, so the openstack CLI works at once."""

from __future__ import annotations

import os
from pathlib import Path

CLOUD_NAME = "orrery"
PLACEHOLDER = "<the admin password>"


def clouds_yaml(url: str, password: str | None) -> str:
    """A clouds.yaml for cloud ``orrery`` as admin in the admin project."""
    return (
        "clouds:\n"
        f"  {CLOUD_NAME}:\n"
        "    auth:\n"
        f"      auth_url: {url}/identity\n"
        "      username: admin\n"
        f"      password: {password or PLACEHOLDER}\n"
        "      project_name: admin\n"
        "      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
        "    region_name: RegionOne\n"
        "    identity_api_version: 3\n"
    )


def write_clouds_yaml(data_dir: str | Path, url: str, password: str | None) -> Path:
    """Write ``<data_dir>/clouds.yaml`` (owner-only: it may hold the password). Without a
    password (a restart: the admin's was shown once, at the first start), the one an
    earlier start wrote there is kept, so the file goes on working."""
    path = Path(data_dir) / "clouds.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    password = password or written_password(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(clouds_yaml(url, password))
    return path


def written_password(path: Path) -> str | None:
    """The admin password a clouds.yaml we wrote holds (None: no file, or the
    placeholder)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "password" and value and value != PLACEHOLDER:
            return value
    return None
