"""Alerts reach the warehouse's history by a sync from the operational DB: complete, newest version, repeatable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from opsmgr.db.alert_sync import sync_alerts_to_warehouse
from opsmgr.db.model import Lane, ResolutionState
from opsmgr.db.writer import write_operational
from tests.integration.db.conftest import Databases
from tests.unit.db.builders import alert, batch

SNAPSHOT = "SELECT alert_id, resolution_state, repeat_count, resolved_at FROM alerts ORDER BY alert_id"


async def test_sync_copies_alerts_and_then_their_changes_idempotently(databases: Databases) -> None:
    now = datetime.now(UTC)
    op, wh = databases.operational, databases.warehouse
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(n, now) for n in range(30)]))
    first = await sync_alerts_to_warehouse(op, wh, chunk_rows=7)
    assert first.copied == 30
    await write_operational(op, batch(1, Lane.PRIORITY, [alert(3, now + timedelta(minutes=1)),
                                                         alert(4, now + timedelta(minutes=2),
                                                               ResolutionState.RESOLVED)]))
    await sync_alerts_to_warehouse(op, wh)
    again = await sync_alerts_to_warehouse(op, wh)
    assert again.watermark >= first.watermark
    assert [tuple(r) for r in await wh.fetch(SNAPSHOT)] == [tuple(r) for r in await op.fetch(SNAPSHOT)]
    assert await wh.fetchval("SELECT count(*) FROM alerts") == 30


async def test_a_change_committed_after_a_sync_started_is_copied_by_the_next_sync(databases: Databases) -> None:
    now = datetime.now(UTC)
    op, wh = databases.operational, databases.warehouse
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(1, now)]))
    slow = await asyncpg.connect(databases.operational_dsn)
    try:
        in_flight = slow.transaction()
        await in_flight.start()
        await write_operational(slow, batch(1, Lane.PRIORITY, [alert(2, now)]))
        # A newer transaction commits while the older one is still open: a time watermark would skip the older.
        await write_operational(op, batch(2, Lane.PRIORITY, [alert(3, now)]))
        assert (await sync_alerts_to_warehouse(op, wh)).copied == 2
        await in_flight.commit()
    finally:
        await slow.close()
    await sync_alerts_to_warehouse(op, wh)
    assert await wh.fetchval("SELECT count(*) FROM alerts") == 3


async def test_a_lost_watermark_only_copies_the_newest_versions_again(databases: Databases) -> None:
    now = datetime.now(UTC)
    op, wh = databases.operational, databases.warehouse
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(1, now)]))
    await sync_alerts_to_warehouse(op, wh)
    await write_operational(op, batch(1, Lane.PRIORITY, [alert(1, now, ResolutionState.CLOSED)]))
    await sync_alerts_to_warehouse(op, wh)
    await wh.execute("DELETE FROM alert_sync_watermarks")  # a lost watermark re-reads everything
    await sync_alerts_to_warehouse(op, wh)
    assert await wh.fetchval("SELECT resolution_state FROM alerts") == ResolutionState.CLOSED
