"""A writer pipeline's room is taken before a batch is formed and given back when the batch is not sent to it."""

from __future__ import annotations

import asyncio

from opsmgr.db.model import Database, Retention
from opsmgr.server.ingest import DatabaseLink, IngestPipeline
from opsmgr.server.metrics import ServerMetrics


def pipeline(capacity: int) -> IngestPipeline:
    # Never started: no writer runs and the database is never dialled; only the room is exercised.
    link = DatabaseLink(Database.OPERATIONAL, "postgresql://nowhere.invalid/none", pool_size=1, connect_timeout=1,
                        retention=Retention(), writers=1)
    return IngestPipeline(link, ServerMetrics(), capacity_items=capacity, writers=1, batches_per_transaction=1,
                          stall_seconds=5)


async def test_room_taken_for_a_batch_not_sent_lets_the_next_one_in_once_given_back() -> None:
    full = pipeline(5000)
    taken = await full.reserve(5000)
    assert taken == 5000 and full.used_items == 5000
    waiting = asyncio.create_task(full.reserve(10))
    await asyncio.sleep(0)
    assert not waiting.done()
    await full.release(taken)  # e.g. the batch proved invalid once formed
    assert await waiting == 10 and full.used_items == 10


async def test_a_batch_larger_than_the_pipeline_takes_all_of_it_and_no_more() -> None:
    small = pipeline(5000)
    assert await small.reserve(8000) == 5000
    await small.release(5000)
    assert small.used_items == 0
