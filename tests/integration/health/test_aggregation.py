"""Warehouse aggregation on real PostgreSQL: the SQL agrees with the specification, and late data corrects hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from opsmgr.db.aggregation import AggregateKind, aggregate_warehouse, floor_hour, performance_aggregate
from opsmgr.db.model import HealthState, Lane, PerformanceSample, StateChange
from opsmgr.db.writer import write_warehouse
from tests.integration.db.conftest import Databases
from tests.unit.db.builders import AGENT, batch

H, W, C = HealthState.HEALTHY, HealthState.WARNING, HealthState.CRITICAL


def cpu(at: datetime, value: float) -> PerformanceSample:
    return PerformanceSample(at, "Linux.Computer:web01", "Processor", "% Processor Time", "_Total", value)


async def hourly(conn: asyncpg.Connection, hour: datetime) -> asyncpg.Record:
    return await conn.fetchrow("SELECT * FROM performance_hourly WHERE hour = $1", hour)


async def test_an_optimized_collection_hour_aggregates_to_the_exact_time_weighted_average(
        databases: Databases) -> None:
    now = datetime.now(UTC)
    hour = floor_hour(now) - timedelta(hours=5)
    sent = [(hour - timedelta(minutes=5), 50.0), (hour + timedelta(minutes=30), 50.0),
            (hour + timedelta(minutes=35), 90.0), (hour + timedelta(minutes=55), 90.0)]
    await write_warehouse(databases.warehouse, batch(0, Lane.BULK, [cpu(t, v) for t, v in sent]))
    report = await aggregate_warehouse(databases.warehouse, now=now)
    assert report.aggregated_until[AggregateKind.PERFORMANCE] == floor_hour(now)
    row = await hourly(databases.warehouse, hour)
    assert row["average"] == pytest.approx((35 * 50 + 25 * 90) / 60)
    assert (row["sample_count"], row["min_value"], row["max_value"], row["covered_seconds"]) == (3, 50, 90, 3600)
    # The last value holds for MAX_HOLD (1 h) after it was sampled: 55 minutes of the next hour.
    spec = performance_aggregate(sent, hour + timedelta(hours=1))
    after = await hourly(databases.warehouse, hour + timedelta(hours=1))
    assert spec is not None and (after["average"], after["covered_seconds"]) == (spec.average, 55 * 60)
    daily = await databases.warehouse.fetchrow("SELECT * FROM performance_daily WHERE day = $1",
                                               datetime.combine((hour - timedelta(minutes=5)).date(),
                                                                datetime.min.time(), tzinfo=UTC))
    assert daily is not None and daily["sample_count"] >= 1


async def test_late_data_corrects_an_hour_already_aggregated_and_the_hour_it_carries_into(
        databases: Databases) -> None:
    now = datetime.now(UTC)
    hour = floor_hour(now) - timedelta(hours=4)
    first = [(hour + timedelta(minutes=m), 10.0) for m in (0, 20, 40)]
    await write_warehouse(databases.warehouse, batch(0, Lane.BULK, [cpu(t, v) for t, v in first]))
    await aggregate_warehouse(databases.warehouse, now=now)
    assert (await hourly(databases.warehouse, hour))["average"] == pytest.approx(10.0)
    # An agent replays its queue after an outage: a 58-minute sample lands in the hour aggregated already.
    late = [(hour + timedelta(minutes=58), 70.0)]
    await write_warehouse(databases.warehouse, batch(1, Lane.BULK, [cpu(t, v) for t, v in late]))
    marks = await databases.warehouse.fetch("SELECT kind, hour FROM aggregation_dirty_hours ORDER BY hour")
    assert [(m["kind"], m["hour"]) for m in marks] == [("performance", hour),
                                                      ("performance", hour + timedelta(hours=1))]
    report = await aggregate_warehouse(databases.warehouse, now=now)
    assert report.dirty[AggregateKind.PERFORMANCE] == 2
    for moment in (hour, hour + timedelta(hours=1)):
        expected = performance_aggregate(first + late, moment)
        row = await hourly(databases.warehouse, moment)
        assert expected is not None
        assert (row["average"], row["max_value"], row["sample_count"]) == pytest.approx(
            (expected.average, expected.max_value, expected.sample_count))
    assert await databases.warehouse.fetchval("SELECT count(*) FROM aggregation_dirty_hours") == 0


async def test_state_hours_split_time_between_states_and_late_changes_correct_every_later_hour(
        databases: Databases) -> None:
    now = datetime.now(UTC)
    hour = floor_hour(now) - timedelta(hours=3)

    def change(minutes: int, old: HealthState, new: HealthState) -> StateChange:
        return StateChange(hour + timedelta(minutes=minutes), "Linux.FileSystem:/data", "FreeSpace", old, new)

    await write_warehouse(databases.warehouse, batch(0, Lane.PRIORITY, [change(0, H, W), change(30, W, H)]))
    await aggregate_warehouse(databases.warehouse, now=now)

    async def percents(moment: datetime) -> tuple[float, float, float]:
        row = await databases.warehouse.fetchrow(
            "SELECT healthy_percent, warning_percent, critical_percent FROM state_hourly WHERE hour = $1", moment)
        return row["healthy_percent"], row["warning_percent"], row["critical_percent"]

    assert await percents(hour) == (50.0, 50.0, 0.0)
    assert await percents(hour + timedelta(hours=2)) == (100.0, 0.0, 0.0)  # carried, no change in that hour
    # A late change at 45 min: Critical from then on, until the present, in every hour after it.
    await write_warehouse(databases.warehouse, batch(1, Lane.PRIORITY, [change(45, H, C)]))
    await aggregate_warehouse(databases.warehouse, now=now)
    assert await percents(hour) == (25.0, 50.0, 25.0)
    assert await percents(hour + timedelta(hours=1)) == (0.0, 0.0, 100.0)
    assert await percents(hour + timedelta(hours=2)) == (0.0, 0.0, 100.0)
    day = await databases.warehouse.fetchval(
        "SELECT sum(critical_seconds) FROM state_daily WHERE agent = $1", AGENT)
    assert day == pytest.approx(15 * 60 + 2 * 3600)


async def test_aggregation_runs_again_without_changing_anything(databases: Databases) -> None:
    now = datetime.now(UTC)
    await write_warehouse(databases.warehouse, batch(0, Lane.BULK, [cpu(floor_hour(now) - timedelta(hours=2), 1.0)]))
    await aggregate_warehouse(databases.warehouse, now=now)
    again = await aggregate_warehouse(databases.warehouse, now=now)
    assert again.hours == {AggregateKind.PERFORMANCE: 0, AggregateKind.STATE: 0}
