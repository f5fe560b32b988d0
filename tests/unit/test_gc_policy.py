"""The collector policy of long-running processes (orrery.gc_policy): what survives a full
collection is frozen, so the next full collections walk only what came since; every
``refreeze_seconds`` a full collection hands everything back first, so garbage cycles
among frozen objects do not live on."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from orrery.gc_policy import CollectorPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def policy() -> Iterator[tuple[CollectorPolicy, Clock]]:
    clock = Clock()
    gc.unfreeze()
    installed = CollectorPolicy(refreeze_seconds=60.0, clock=clock).install()
    try:
        yield installed, clock
    finally:
        installed.remove()


def test_what_survives_a_full_collection_is_frozen(
    policy: tuple[CollectorPolicy, Clock],
) -> None:
    collector, _ = policy
    kept = [Cycle() for _ in range(100)]
    gc.collect()
    assert collector.full == 1 and gc.get_freeze_count() > len(kept)
    # a younger collection leaves the frozen alone
    gc.collect(0)
    assert gc.get_freeze_count() > len(kept)


def test_a_cycle_that_dies_frozen_is_collected_after_the_thaw(
    policy: tuple[CollectorPolicy, Clock],
) -> None:
    collector, clock = policy
    survivor = Cycle()
    gc.collect()  # survivor is frozen now
    assert gc.get_freeze_count() > 0
    alive = weakref.ref(survivor)
    del survivor  # garbage, but frozen: a full collection does not see it
    gc.collect()
    assert alive() is not None
    clock.now = 61.0
    gc.collect()  # past refreeze_seconds: everything is handed back after it
    assert collector.thaws == 1 and gc.get_freeze_count() == 0
    gc.collect()  # walks everything: the dead cycle is found and freed
    assert alive() is None


def test_remove_hands_everything_back() -> None:
    collector = CollectorPolicy().install()
    gc.collect()
    assert gc.get_freeze_count() > 0
    collector.remove()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gc.get_freeze_count() == 0
