"""The server-wide budget for batches read past while they wait for room in a writer pipeline."""

from __future__ import annotations

import asyncio

import pytest

from opsmgr.server.ingest import BatchParking, may_park
from opsmgr.server.metrics import ServerMetrics


@pytest.mark.parametrize(("parked", "size", "budget", "expected"), [
    (0, 100, 1000, True),
    (900, 100, 1000, True),  # exactly fills it
    (901, 100, 1000, False),
    (0, 5000, 1000, True),  # alone, a batch larger than the whole budget is still read
    (1, 5000, 1000, False),
    (0, 1, 0, True),  # a budget of 0 parks one batch at a time, server-wide
])
def test_a_batch_parks_within_the_budget_or_alone(parked: int, size: int, budget: int, expected: bool) -> None:
    assert may_park(parked, size, budget) is expected


async def test_waiting_streams_are_let_in_in_arrival_order_as_budget_is_given_back() -> None:
    parking = BatchParking(1000, ServerMetrics())
    await parking.park(800)
    let_in: list[str] = []

    async def stream(name: str, size: int) -> None:
        await parking.park(size)
        let_in.append(name)

    big = asyncio.create_task(stream("big", 900))
    await asyncio.sleep(0)
    small = asyncio.create_task(stream("small", 100))  # would fit now, but arrived after the big one
    await asyncio.sleep(0)
    assert let_in == [] and parking.parked_bytes == 800
    parking.leave(800)
    await asyncio.gather(big, small)
    assert let_in == ["big", "small"] and parking.parked_bytes == 1000


async def test_a_stream_that_goes_while_waiting_leaves_no_budget_taken() -> None:
    parking = BatchParking(1000, ServerMetrics())
    await parking.park(1000)
    gone = asyncio.create_task(parking.park(600))
    behind = asyncio.create_task(parking.park(500))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    parking.leave(1000)
    await behind
    assert parking.parked_bytes == 500


async def test_a_stream_let_in_just_as_it_goes_gives_its_budget_back() -> None:
    parking = BatchParking(1000, ServerMetrics())
    await parking.park(1000)
    gone = asyncio.create_task(parking.park(600))
    await asyncio.sleep(0)
    parking.leave(1000)  # lets it in; it is cancelled before it runs again
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled() and parking.parked_bytes == 0
