"""Field-by-field differences between two folded states."""

from __future__ import annotations

from replay.changes import ABSENT, changes


def test_nested_fields_are_named_by_path() -> None:
    before = {"vm_state": "building", "flavor": {"vcpus": 1}, "nics": [{"mac": "a"}],
              "fault": None, "gone": 1}
    after = {"vm_state": "active", "flavor": {"vcpus": 1}, "nics": [{"mac": "b"}],
             "fault": {"code": 500}, "new": 2}
    found = {c.path: (c.verb, c.before, c.after) for c in changes(before, after)}
    assert found == {
        "vm_state": ("changed", "building", "active"),
        "nics[0].mac": ("changed", "a", "b"),
        "fault": ("changed", None, {"code": 500}),
        "gone": ("removed", 1, ABSENT),
        "new": ("added", ABSENT, 2),
    }


def test_lists_of_another_length_change_as_a_whole() -> None:
    [c] = changes({"refused": ["h1"]}, {"refused": ["h1", "h2"]})
    assert (c.path, c.before, c.after) == ("refused", ["h1"], ["h1", "h2"])


def test_equal_states_have_no_changes() -> None:
    assert changes({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) == []
