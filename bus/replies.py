"""Answering a command: to a caller's reply queue, or to an actor as a message of its own.

A call's ``reply_to`` is normally the caller's reply queue. A saga that asks another actor
(or a host) for something sets ``reply_to`` to an *actor address*, ``actor:<kind>:<id>``:
the answer then travels like any command, to the shard that owns that actor, as a message
of type ``reply`` whose body is the Reply. So the answer is durable (it survives the
asking process) and reaches the asking actor through its single writer.
"""

from __future__ import annotations

import datetime as dt

from bus.envelopes import command_envelope
from bus.protocol import Bus
from schemas import CommandEnvelope, Reply

ACTOR_PREFIX = "actor:"
#: the envelope type of an answer delivered to an actor (Reply's own tag)
REPLY_TYPE = "reply"
#: how long an answer to an actor may wait in its shard queue
REPLY_DEADLINE = dt.timedelta(days=7)


def actor_address(kind: str, actor_id: str) -> str:
    """The ``reply_to`` that sends answers to actor ``(kind, actor_id)``."""
    return f"{ACTOR_PREFIX}{kind}:{actor_id}"


def parse_actor_address(reply_to: str) -> tuple[str, str] | None:
    """``(kind, actor_id)`` of an actor address, None for a reply queue."""
    if not reply_to.startswith(ACTOR_PREFIX):
        return None
    kind, sep, actor_id = reply_to[len(ACTOR_PREFIX):].partition(":")
    if not sep or not kind or not actor_id:
        return None
    return kind, actor_id


def reply_envelope(msg: CommandEnvelope, kind: str, actor_id: str, reply: Reply) -> CommandEnvelope:
    """The message that carries ``reply`` (to ``msg``) to actor ``(kind, actor_id)``."""
    suffix = f":{reply.result}" if reply.partial else ""
    return command_envelope(
        kind, actor_id, reply, command_id=f"reply:{reply.command_id}{suffix}",
        timeout=REPLY_DEADLINE.total_seconds(), correlation_id=msg.correlation_id,
        causation_id=msg.command_id, project_id=msg.project_id, user_id=msg.user_id)


async def answer(bus: Bus, msg: CommandEnvelope, reply: Reply) -> None:
    """Send ``reply`` to whoever ``msg.reply_to`` names (nothing when it names nobody)."""
    if not msg.reply_to:
        return
    actor = parse_actor_address(msg.reply_to)
    if actor is None:
        await bus.reply(msg.reply_to, reply)
    else:
        await bus.send(reply_envelope(msg, actor[0], actor[1], reply))
