"""Field-by-field differences between two states, as plain data (dicts, lists, scalars)."""

from __future__ import annotations

from typing import Any

import msgspec

#: a value that is absent on one side of a change
ABSENT = "<absent>"


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One field that differs: its path (``flavor.vcpus``, ``nics[0].mac``), before, after."""

    path: str
    before: Any
    after: Any

    @property
    def verb(self) -> str:
        if self.before == ABSENT:
            return "added"
        return "removed" if self.after == ABSENT else "changed"


def changes(before: Any, after: Any, path: str = "") -> list[Change]:
    """Every leaf that differs between ``before`` and ``after``, depth first, in key order."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        return _dicts(before, after, path)
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out: list[Change] = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            out += changes(b, a, f"{path}[{i}]")
        return out
    return [Change(path=path or ".", before=before, after=after)]


def _dicts(before: dict[str, Any], after: dict[str, Any], path: str) -> list[Change]:
    out: list[Change] = []
    for key in sorted(set(before) | set(after), key=str):
        sub = f"{path}.{key}" if path else str(key)
        if key not in before:
            out.append(Change(path=sub, before=ABSENT, after=after[key]))
        elif key not in after:
            out.append(Change(path=sub, before=before[key], after=ABSENT))
        else:
            out += changes(before[key], after[key], sub)
    return out
