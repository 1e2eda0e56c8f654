"""The per-stream outbox: in order, bounded, joinable, and a cancelled waiter leaves the others waiting."""

from __future__ import annotations

import asyncio

import pytest

from opsmgr.server.outbox import Outbox


async def test_messages_come_out_in_the_order_they_were_put() -> None:
    outbox: Outbox[str] = Outbox(limit=10)
    for message in ("welcome", "ack 1", "ack 2"):
        await outbox.put(message)
    assert [await outbox.get() for _ in range(3)] == ["welcome", "ack 1", "ack 2"]


async def test_a_full_outbox_holds_the_writer_back_until_the_sender_takes_one() -> None:
    outbox: Outbox[int] = Outbox(limit=2)
    await outbox.put(1)
    await outbox.put(2)
    third = asyncio.create_task(outbox.put(3))
    await asyncio.sleep(0)
    assert not third.done() and len(outbox) == 2
    assert await outbox.get() == 1
    await third
    assert [await outbox.get(), await outbox.get()] == [2, 3]


async def test_the_sender_waits_for_a_message_to_be_put() -> None:
    outbox: Outbox[str] = Outbox(limit=2)
    taken = asyncio.create_task(outbox.get())
    await asyncio.sleep(0)
    assert not taken.done()
    await outbox.put("ack")
    assert await taken == "ack"


async def test_join_waits_until_every_message_taken_is_done() -> None:
    outbox: Outbox[str] = Outbox(limit=4)
    await outbox.put("ack 1")
    await outbox.put("ack 2")
    joined = asyncio.create_task(outbox.join())
    await outbox.get()
    outbox.task_done()
    await asyncio.sleep(0)
    assert not joined.done(), "one message is still queued"
    await outbox.get()
    await asyncio.sleep(0)
    assert not joined.done(), "the last message taken is still being written"
    outbox.task_done()
    await joined
    with pytest.raises(ValueError):
        outbox.task_done()


async def test_a_cancelled_writer_leaves_the_other_writers_waiting_their_turn() -> None:
    outbox: Outbox[str] = Outbox(limit=1)
    await outbox.put("first")
    cancelled = asyncio.create_task(outbox.put("dropped"))
    waiting = asyncio.create_task(outbox.put("second"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert not waiting.done()
    assert await outbox.get() == "first"
    await waiting
    assert await outbox.get() == "second" and len(outbox) == 0


async def test_clear_hands_back_what_nobody_took_and_join_no_longer_waits_for_it() -> None:
    box: Outbox[int] = Outbox(limit=4)
    for n in range(3):
        await box.put(n)
    assert await box.get() == 0
    box.task_done()
    assert box.clear() == [1, 2]
    assert len(box) == 0
    async with asyncio.timeout(5):  # a guard against hanging, not a measurement
        await box.join()
