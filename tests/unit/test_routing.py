"""Routing: AMQP topic semantics and stable shard choice, identical in every process."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from bus.routing import Names, shard_of, topic_matches

CASES = [
    ("instance.*", "instance.scheduled", True),
    ("instance.*", "instance.scheduled.late", False),
    ("instance.#", "instance", True),
    ("instance.#", "instance.a.b", True),
    ("#", "anything.at.all", True),
    ("#.bound", "port.bound", True),
    ("#.bound", "bound", True),
    ("#.bound", "port.unbound", False),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c.z", True),
    ("*.bound", "port.bound", True),
    ("*", "port.bound", False),
    ("port.bound", "port.bound", True),
    ("port.bound", "port.boundary", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), CASES)
def test_topic_patterns_match_as_amqp_does(pattern: str, key: str, expected: bool) -> None:
    """'*' is exactly one word and '#' zero or more, as RabbitMQ's topic exchange."""
    assert topic_matches(pattern, key) is expected


words = st.lists(st.sampled_from(["a", "b", "port", "x1"]), min_size=1, max_size=5)


@given(words)
def test_a_key_matches_itself_and_hash(parts: list[str]) -> None:
    """Every key matches itself, '#', and its first word followed by '#'."""
    key = ".".join(parts)
    assert topic_matches(key, key)
    assert topic_matches("#", key)
    assert topic_matches(parts[0] + ".#", key)


def test_shard_of_is_stable_and_spreads_actors() -> None:
    """The same id always picks the same shard (a fixed hash, not Python's salted one),
    and many ids use every shard."""
    assert shard_of("instance-42", 8) == shard_of("instance-42", 8)
    assert shard_of("abc", 8) == 1  # pinned: changing the hash would move every actor
    assert {shard_of(f"id-{i}", 8) for i in range(200)} == set(range(8))


def test_names_route_host_commands_to_the_host_queue() -> None:
    """Commands of kind 'compute' go to compute.<host>; others to their kind's shard."""
    names = Names(prefix="p", shards=4)
    assert names.command_queue("compute", "host1") == "p.compute.host1"
    assert names.command_queue("port", "x").startswith("p.cmd.port.")
