"""The heap freezer: long-lived objects leave the collector's generations; a thaw returns them and collects."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from opsmgr.server.heap import FreezePolicy, HeapFreezer, due_to_thaw


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()  # this test process must keep its own collector as it was
    gc.set_threshold(*thresholds)


def test_thaw_is_due_only_after_its_interval() -> None:
    policy = FreezePolicy(freeze_seconds=5, thaw_seconds=900)
    assert not due_to_thaw(policy, 899.9)
    assert due_to_thaw(policy, 900)


async def test_the_freezer_freezes_what_exists_and_a_thaw_frees_frozen_cycles() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    freezer = HeapFreezer(FreezePolicy(freeze_seconds=0.01, thaw_seconds=3600))
    running = asyncio.create_task(freezer.run())
    await asyncio.sleep(0.05)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == FreezePolicy().thresholds
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    del cycle
    freezer.thaw()
    assert freezer.thaws == 1
    assert gc.get_freeze_count() == 0
