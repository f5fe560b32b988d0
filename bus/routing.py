"""Routing: the one place that names exchanges, queues and keys, and matches topics."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

#: commands whose kind is this go to a host queue, not an actor shard
HOST_KIND = "compute"
DEFAULT_SHARDS = 8


class Names:
    """Every exchange and queue name, under one prefix so runs never see each other."""

    def __init__(self, prefix: str = "orrery", shards: int = DEFAULT_SHARDS) -> None:
        self.prefix = prefix
        self.shards = shards

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def commands_exchange(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead"

    def shard_queue(self, kind: str, shard: int) -> str:
        return f"{self.prefix}.cmd.{kind}.{shard}"

    def host_queue(self, host: str) -> str:
        return f"{self.prefix}.compute.{host}"

    def event_queue(self, name: str) -> str:
        return f"{self.prefix}.ev.{name}"

    def command_queue(self, kind: str, actor_id: str) -> str:
        """The queue a command for ``(kind, actor_id)`` is routed to."""
        if kind == HOST_KIND:
            return self.host_queue(actor_id)
        return self.shard_queue(kind, shard_of(actor_id, self.shards))


def shard_of(actor_id: str, shards: int) -> int:
    """A stable hash of the actor id picks its shard (same in every process and run)."""
    digest = hashlib.blake2b(actor_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@lru_cache(maxsize=4096)
def _topic_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for i, word in enumerate(pattern.split(".")):
        if word == "#":
            # '#' matches zero or more words, swallowing the dot that joins it
            parts.append(r"(?:[^.]+(?:\.[^.]+)*)?" if i == 0 else r"(?:\.[^.]+)*")
            continue
        sep = r"\." if i else ""
        parts.append(sep + (r"[^.]+" if word == "*" else re.escape(word)))
    regex = "".join(parts)
    if pattern.startswith("#.") and len(pattern) > 2:
        # "#.x" must also match "x": let the leading '#' eat its own trailing dot
        regex = r"(?:[^.]+\.)*" + "".join(parts[1:])[2:]
    return re.compile(regex + r"\Z")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on '.', '*' is one word, '#' zero or more."""
    return _topic_regex(pattern).match(key) is not None
