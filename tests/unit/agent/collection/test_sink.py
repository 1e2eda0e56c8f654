"""Items are built within the channel's limits, and calls that arrive together reach the queue together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from opsmgr.agent import sink
from opsmgr.agent.sink import CoalescingSink, ListSink
from opsmgr.api.management_pack import EventLevel
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol import limits

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sample(value: float) -> pb.Item:
    return sink.performance(T0, object_key="k", object_name="Memory", counter="% Used Memory", instance="",
                            value=value)


def test_long_text_is_cut_and_marked_so_the_server_accepts_it() -> None:
    item = sink.event(T0, object_key="k", channel="/var/log/app.log", source="r", number=1,
                      level=EventLevel.ERROR, description="x" * (limits.MAX_STRING_CHARS + 10))
    assert len(item.event.description) == limits.MAX_STRING_CHARS
    assert item.event.description.endswith(sink.TRUNCATION_MARK)
    assert item.event.level == 2


async def test_calls_within_the_window_become_one_downstream_call() -> None:
    calls: list[list[float]] = []

    async def downstream(items: Sequence[pb.Item]) -> None:
        calls.append([i.performance.value for i in items])

    coalescing = CoalescingSink(downstream, window_seconds=0.02)
    await asyncio.gather(*(coalescing([sample(n)]) for n in range(50)))
    await coalescing([sample(99)])
    assert calls == [[float(n) for n in range(50)], [99.0]]


async def test_every_caller_of_a_window_sees_the_downstream_failure() -> None:
    async def failing(items: Sequence[pb.Item]) -> None:
        raise OSError("disk full")

    coalescing = CoalescingSink(failing, window_seconds=0.01)
    results = await asyncio.gather(coalescing([sample(1)]), coalescing([sample(2)]), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]


async def test_a_cancelled_caller_does_not_cancel_the_others_delivery() -> None:
    collected = ListSink()
    coalescing = CoalescingSink(collected, window_seconds=0.02)
    first = asyncio.create_task(coalescing([sample(1)]))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescing([sample(2)]))
    await asyncio.sleep(0)
    first.cancel()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert [i.performance.value for i in collected.items] == [1.0, 2.0]
