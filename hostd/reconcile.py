"""Reconciling a host against the log: report what the hypervisor has, remove orphans.

One round: list the hypervisor's domains, ask the host actor which instances hold a claim
here (``host.expected``), then

- tell every expected instance the state of its domain (``instance.observed`` with
  ``reconcile=True``; ``missing`` when the hypervisor does not know it), as of the time
  the domains were listed — the instance actor decides what that means (power-state
  sync, or ERROR for a missing domain), and ignores a listing older than its last change
  (a server that spawned after the listing is not missing);
- remember when each managed domain that is *not* expected was first seen so, and
  destroy + undefine it once it has been unexpected for ``orphan_grace`` seconds.

A domain that is expected again (or gone) is forgotten. If the host actor does not answer,
the round is skipped: nothing is removed on a guess. Domains Orrery did not define
(``Hypervisor.managed_domains``) are never touched. hostd never writes the log.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable

import msgspec
import structlog

from bus.envelopes import command_envelope
from bus.errors import BusError
from bus.protocol import Bus
from hostd.hypervisor import Hypervisor, HypervisorError
from schemas import CommandEnvelope
from schemas.hostd import (
    HOST_ACTOR_KIND,
    INSTANCE_ACTOR_KIND,
    DomainState,
    ExpectedDomains,
    InstanceObserved,
)

log = structlog.get_logger(__name__)

#: how long an observation may wait for its instance actor
OBSERVATION_DEADLINE = 300.0
_EXPECTED = msgspec.json.Decoder(list[str])


def is_instance_id(value: str) -> bool:
    """Whether ``value`` looks like an instance id (a canonical uuid)."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def observed_envelope(instance_id: str, observed: InstanceObserved) -> CommandEnvelope:
    """``observed`` on its way to the instance actor."""
    return command_envelope(INSTANCE_ACTOR_KIND, instance_id, observed,
                            timeout=OBSERVATION_DEADLINE)


class RoundResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one round did: instances told, orphans waiting out their grace, removed."""

    told: dict[str, DomainState]
    pending_orphans: tuple[str, ...]
    removed: tuple[str, ...]


class Reconciler:
    """Compares one host's domains with its claims; ``run_once`` is one round.

    ``busy(uuid)`` says a command for that domain is under way (it is then left for a
    later round); ``clock`` (monotonic seconds) lets tests pass the grace period.
    """

    def __init__(
        self, bus: Bus, hypervisor: Hypervisor, host: str, *, orphan_grace: float = 300.0,
        call_timeout: float = 10.0, busy: Callable[[str], bool] = lambda _uuid: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if orphan_grace < 0 or call_timeout <= 0:
            raise ValueError("orphan_grace must be >= 0 and call_timeout positive")
        self.bus = bus
        self.hypervisor = hypervisor
        self.host = host
        self.orphan_grace = orphan_grace
        self.call_timeout = call_timeout
        self.busy = busy
        self.clock = clock
        self._unexpected_since: dict[str, float] = {}

    async def run_once(self) -> RoundResult | None:
        """One round; None when it was skipped (hypervisor or host actor did not answer)."""
        listed_at = dt.datetime.now(dt.UTC)  # what the listing shows is as of then
        try:
            domains = await self.hypervisor.list_domains()
            managed = await self.hypervisor.managed_domains()
        except HypervisorError as exc:
            log.warning("reconcile_skipped", host=self.host, reason=f"hypervisor: {exc}")
            return None
        expected = await self._expected()
        if expected is None:
            return None
        told = await self._tell(expected, domains, listed_at)
        pending, removed = await self._orphans(expected, managed)
        log.info("reconciled", host=self.host, expected=len(expected), domains=len(domains),
                 pending_orphans=len(pending), removed=len(removed))
        return RoundResult(told=told, pending_orphans=tuple(pending), removed=tuple(removed))

    async def _expected(self) -> set[str] | None:
        """The instances with a claim on this host; None if the host actor did not say."""
        env = command_envelope(HOST_ACTOR_KIND, self.host, ExpectedDomains(),
                             timeout=self.call_timeout)
        try:
            reply = await self.bus.call(env, timeout=self.call_timeout)
        except (BusError, TimeoutError) as exc:
            log.warning("reconcile_skipped", host=self.host, reason=f"host actor: {exc!r}")
            return None
        if not reply.ok:
            log.warning("reconcile_skipped", host=self.host,
                        reason=f"host actor answered {reply.error_type}: {reply.error}")
            return None
        try:
            return set(_EXPECTED.decode(reply.result or "[]"))
        except msgspec.DecodeError as exc:
            log.warning("reconcile_skipped", host=self.host, reason=f"bad answer: {exc}")
            return None

    async def _tell(self, expected: set[str], domains: dict[str, DomainState],
                    listed_at: dt.datetime) -> dict[str, DomainState]:
        """Send every expected instance the state its domain was in when listed (an
        instance spawned or changed since ignores it: the listing is older than that)."""
        told: dict[str, DomainState] = {}
        for instance_id in sorted(expected):
            state = domains.get(instance_id, DomainState.MISSING)
            observed = InstanceObserved(host=self.host, state=state, reconcile=True,
                                        observed_at=listed_at)
            try:
                await self.bus.send(observed_envelope(instance_id, observed))
            except BusError as exc:
                log.warning("reconcile_tell_failed", instance_id=instance_id, reason=str(exc))
                continue
            if state is DomainState.MISSING:
                log.warning("expected_domain_missing", host=self.host, instance_id=instance_id)
            told[instance_id] = state
        return told

    async def _orphans(self, expected: set[str], managed: dict[str, DomainState],
                       ) -> tuple[list[str], list[str]]:
        """Track unexpected managed domains; remove those past the grace period."""
        now = self.clock()
        unexpected = set(managed) - expected
        for forgotten in set(self._unexpected_since) - unexpected:
            del self._unexpected_since[forgotten]
        pending: list[str] = []
        removed: list[str] = []
        for domain in sorted(unexpected):
            since = self._unexpected_since.setdefault(domain, now)
            if now - since < self.orphan_grace or self.busy(domain):
                if since == now:
                    log.info("orphan_seen", host=self.host, uuid=domain,
                             state=managed[domain], grace=self.orphan_grace)
                pending.append(domain)
                continue
            try:
                await self.hypervisor.undefine(domain)
            except HypervisorError as exc:
                log.warning("orphan_remove_failed", host=self.host, uuid=domain,
                            reason=str(exc))
                pending.append(domain)
                continue
            del self._unexpected_since[domain]
            log.info("orphan_removed", host=self.host, uuid=domain, state=managed[domain],
                     unexpected_for=round(now - since, 3))
            removed.append(domain)
        return pending, removed
