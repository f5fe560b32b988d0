"""The house plan's import rule: imports flow downward and there are no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("schemas", "store", "bus", "actors", "hostd", "gateway", "webhooks", "replay", "orrery")
#: what each room may import of ours (DESIGN.md, "Imports flow downward")
ALLOWED = {
    "schemas": set(),
    "store": {"schemas"},
    "bus": {"schemas"},
    "actors": {"schemas", "store", "bus"},
    "hostd": {"schemas", "bus"},
    "gateway": {"schemas", "store", "bus", "actors"},
    "webhooks": {"schemas", "store", "bus", "actors"},
    "replay": {"schemas", "store", "bus", "actors"},
    "orrery": set(ROOMS) - {"orrery"},
}


def imported_rooms(room: str) -> dict[str, set[str]]:
    """For each module of ``room``, the other rooms it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / room).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = (names & set(ROOMS)) - {room}
    return found


@pytest.mark.parametrize("room", ROOMS)
def test_room_imports_only_rooms_below_it(room: str) -> None:
    """schemas imports nothing of ours; store and bus only schemas; hostd never the store."""
    for module, rooms in imported_rooms(room).items():
        assert rooms <= ALLOWED[room], f"{module} imports {sorted(rooms - ALLOWED[room])}"
