"""Carrying out the hostd wire commands (``hostd.spawn`` …) on a Hypervisor, one Reply each.

Every command is idempotent and bounded by its envelope's deadline. Commands for one
instance run one at a time in arrival order; different instances run concurrently.

Reply conventions (``Reply`` has no result field):

- ok: ``ok=True`` and ``result`` carries the domain's state right after the command
  (a ``DomainState`` value, e.g. ``running``); for ``hostd.state`` that is the answer.
- failure: ``ok=False``, ``error_type`` one of ``not_found`` (no such domain),
  ``conflict`` (wrong state, e.g. soft reboot of a shut-off domain), ``bad_request``
  (inconsistent command), ``hypervisor_error``, ``unavailable`` (retryable) and
  ``deadline_exceeded`` (retryable when it ran out mid-operation), ``error`` the text.

A body that does not decode is no Reply: the handler raises BadMessage (dead letter).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import structlog

from bus.errors import BadMessage
from hostd.hypervisor import (
    DomainNotFound,
    DomainStateError,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
)
from schemas import CommandEnvelope, Reply
from schemas.hostd import (
    HOSTD_COMMAND_DECODER,
    DestroyDomain,
    DomainState,
    GetDomainState,
    HostdCommand,
    RebootDomain,
    SpawnDomain,
    StartDomain,
    StopDomain,
)

log = structlog.get_logger(__name__)


class CommandFailed(Exception):
    """A command that cannot be carried out, with the Reply's error type."""

    def __init__(self, error_type: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable


def decode_command(msg: CommandEnvelope) -> HostdCommand:
    """The command in ``msg``'s body; BadMessage if it does not decode or its tag lies."""
    try:
        command = HOSTD_COMMAND_DECODER.decode(msg.body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"undecodable {msg.type} body: {exc}") from exc
    tag = type(command).__struct_config__.tag
    if tag != msg.type:
        raise BadMessage(f"envelope type {msg.type!r} but body is {tag!r}")
    return command


def _error_type(exc: HypervisorError) -> str:
    if isinstance(exc, DomainNotFound):
        return "not_found"
    if isinstance(exc, DomainStateError):
        return "conflict"
    if isinstance(exc, HypervisorUnavailable):
        return "unavailable"
    return "hypervisor_error"


class HostCommands:
    """Runs decoded hostd commands against one hypervisor."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self.hypervisor = hypervisor
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    async def handle(self, msg: CommandEnvelope, command: HostdCommand) -> Reply:
        """Carry out ``command`` before ``msg.deadline``; the Reply says how it went."""
        remaining = (msg.deadline - dt.datetime.now(dt.UTC)).total_seconds()
        if remaining <= 0:
            return self._failed(msg, CommandFailed(
                "deadline_exceeded", f"command {msg.command_id} arrived after its deadline"))
        try:
            async with self._serialised(command.instance_id):
                async with asyncio.timeout(remaining):
                    state = await self._apply(command)
        except CommandFailed as exc:
            return self._failed(msg, exc)
        except HypervisorError as exc:
            return self._failed(msg, CommandFailed(_error_type(exc), str(exc),
                                                   retryable=exc.retryable))
        except TimeoutError:
            return self._failed(msg, CommandFailed(
                "deadline_exceeded", f"{msg.type} ran past its deadline", retryable=True))
        log.info("hostd_command_done", type=msg.type, instance_id=command.instance_id,
                 state=state)
        return Reply(command_id=msg.command_id, ok=True, result=state.value)

    async def _apply(self, command: HostdCommand) -> DomainState:
        hv = self.hypervisor
        uuid = command.instance_id
        match command:
            case SpawnDomain(spec=spec):
                if spec.uuid != uuid:
                    raise CommandFailed("bad_request",
                                        f"spec uuid {spec.uuid} is not instance {uuid}")
                await hv.define(spec)
                await hv.start(uuid)
            case StopDomain(timeout=timeout):
                outcome = await hv.shutdown(uuid, timeout)
                log.info("domain_stopped", instance_id=uuid, outcome=outcome)
            case StartDomain():
                await hv.start(uuid)
            case RebootDomain(hard=hard):
                await hv.reboot(uuid, hard=hard)
            case DestroyDomain():
                await hv.undefine(uuid)
            case GetDomainState():
                pass
        return await hv.state(uuid)

    @asynccontextmanager
    async def _serialised(self, instance_id: str) -> AsyncIterator[None]:
        """One command per instance at a time; the lock is dropped when nobody holds it."""
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        self._users[instance_id] = self._users.get(instance_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[instance_id] -= 1
            if not self._users[instance_id]:
                del self._users[instance_id], self._locks[instance_id]

    @staticmethod
    def _failed(msg: CommandEnvelope, exc: CommandFailed) -> Reply:
        log.warning("hostd_command_failed", type=msg.type, error_type=exc.error_type,
                    reason=str(exc), retryable=exc.retryable)
        return Reply(command_id=msg.command_id, ok=False, error_type=exc.error_type,
                     error=str(exc), retryable=exc.retryable)
