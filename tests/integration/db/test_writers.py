"""Exactly-once writes on real PostgreSQL: the right databases, once, whatever the replay order or races."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from opsmgr.db.model import (
    Batch,
    Database,
    DiscoveryItem,
    DropReason,
    Event,
    EventLevel,
    Item,
    ItemKind,
    Lane,
    PerformanceSample,
    ResolutionState,
)
from opsmgr.db.partitions import PARTITIONED_TABLES, partition_day, partition_name
from opsmgr.db.routing import TABLE_COLUMNS, databases_for
from opsmgr.db.schema import existing_partitions
from opsmgr.db.writer import (
    CommitOutcome,
    CommitResult,
    prepare_writer_connection,
    write_operational,
    write_operational_batches,
    write_warehouse,
    write_warehouse_batches,
)
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.convert import to_batch
from tests.integration.db.conftest import Databases
from tests.unit.db.builders import AGENT, alert, batch, discovery, event, sample, state_change

WRITERS = {Database.OPERATIONAL: write_operational, Database.WAREHOUSE: write_warehouse}
RAW_TABLES = tuple(PARTITIONED_TABLES.values())
PRIORITY_ITEMS: list[Callable[[int, datetime], Item]] = [alert, state_change, discovery]
BULK_ITEMS: list[Callable[[int, datetime], Item]] = [event, sample]


async def deliver(databases: Databases, sent: Batch) -> dict[Database, CommitResult]:
    """What the server does per batch: write it to each database it belongs to, concurrently."""
    targets = sorted(databases_for(sent))
    results = await asyncio.gather(*(WRITERS[db](databases.conn(db), sent) for db in targets))
    return dict(zip(targets, results, strict=True))


async def count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def test_every_kind_lands_in_the_right_databases_exactly_once(databases: Databases) -> None:
    now = datetime.now(UTC)
    sends = [batch(0, Lane.PRIORITY, [alert(1, now), state_change(2, now), discovery(3, now)]),
             batch(1, Lane.BULK, [event(4, now), sample(5, now)])]
    for sent in sends * 2:
        await deliver(databases, sent)
    op, wh = databases.operational, databases.warehouse
    assert [await count(op, t) for t in (*RAW_TABLES, "alerts", "discovered_objects")] == [1, 1, 1, 1, 1]
    assert [await count(wh, t) for t in (*RAW_TABLES, "alerts")] == [1, 1, 1, 0]
    assert await count(op, "committed_batches") == 2
    assert await count(wh, "committed_batches") == 2


async def test_a_batch_already_committed_is_skipped_and_says_so(databases: Databases) -> None:
    now = datetime.now(UTC)
    sent = batch(7, Lane.BULK, [event(1, now), event(2, now), sample(3, now)])
    first = await write_operational(databases.operational, sent)
    again = await write_operational(databases.operational, sent)
    assert first.outcome is CommitOutcome.COMMITTED
    assert first.written == {ItemKind.EVENT: 2, ItemKind.PERFORMANCE: 1}
    assert again.outcome is CommitOutcome.ALREADY_COMMITTED
    assert again.written == {}


def generate(now: datetime, rng: random.Random) -> tuple[list[Batch], Counter[str]]:
    """Batches of one agent over two epochs (a reinstall restarts seq at 0), and the items of each kind made."""
    batches: list[Batch] = []
    made: Counter[str] = Counter()
    n = 0
    for epoch in (uuid.uuid4(), uuid.uuid4()):
        for seq in range(25):
            at = now - timedelta(hours=rng.randint(0, 100))  # within the operational 7 days: nothing dropped
            items: list[Item]
            if seq % 3 == 0:
                items = [rng.choice(PRIORITY_ITEMS)(n + i, at) for i in range(rng.randint(1, 8))]
                lane = Lane.PRIORITY
            else:
                items = [rng.choice(BULK_ITEMS)(n + i, at) for i in range(rng.randint(1, 300))]
                lane = Lane.BULK
            n += len(items)
            made.update(item.kind for item in items)
            batches.append(batch(seq, lane, items, epoch=epoch))
    return batches, made


async def test_shuffled_replays_with_duplicates_and_an_epoch_reset_give_exactly_what_was_generated(
        databases: Databases) -> None:
    rng = random.Random(6)
    batches, made = generate(datetime.now(UTC), rng)
    sends = [b for b in batches for _ in range(rng.randint(1, 3))]
    rng.shuffle(sends)
    outcomes: Counter[CommitOutcome] = Counter()
    for sent in sends:
        outcomes.update(result.outcome for result in (await deliver(databases, sent)).values())
    assert outcomes[CommitOutcome.COMMITTED] == sum(len(databases_for(b)) for b in batches)
    for database in Database:
        conn = databases.conn(database)
        for kind, table in PARTITIONED_TABLES.items():
            rows, keys = await conn.fetchrow(
                f"SELECT count(*), count(DISTINCT (agent, batch_epoch, batch_seq, item_no)) FROM {table}")
            assert rows == keys == made[kind], (database, table)
    op = databases.operational
    assert await count(op, "alerts") == made[ItemKind.ALERT]
    assert await op.fetchval("SELECT sum(repeat_count) FROM alerts") == 0
    assert await count(op, "discovered_objects") == made[ItemKind.DISCOVERY]
    assert await count(op, "committed_batches") == len(batches)


async def test_concurrent_duplicate_commits_from_two_connections_yield_one_copy(databases: Databases) -> None:
    now = datetime.now(UTC)
    for database in Database:
        second = await asyncpg.connect(databases.dsn(database))
        try:
            for seq in range(5):
                sent = batch(seq, Lane.BULK, [event(i, now) for i in range(3000)])
                results = await asyncio.gather(WRITERS[database](databases.conn(database), sent),
                                               WRITERS[database](second, sent))
                assert sorted(r.outcome for r in results) == [CommitOutcome.ALREADY_COMMITTED,
                                                              CommitOutcome.COMMITTED]
        finally:
            await second.close()
        assert await count(databases.conn(database), "events") == 5 * 3000


async def test_a_duplicate_waits_for_the_commit_in_flight_and_then_skips_or_takes_over(
        databases: Databases) -> None:
    now = datetime.now(UTC)
    second = await asyncpg.connect(databases.operational_dsn)
    try:
        for first_commits, expected in ((True, CommitOutcome.ALREADY_COMMITTED), (False, CommitOutcome.COMMITTED)):
            sent = batch(int(first_commits), Lane.BULK, [event(1, now)])
            in_flight = databases.operational.transaction()
            await in_flight.start()
            await write_operational(databases.operational, sent)  # inside in_flight: written, not yet committed
            duplicate = asyncio.create_task(write_operational(second, sent))
            await asyncio.sleep(0.3)
            assert not duplicate.done(), "the duplicate must wait on the batch key, not write a second copy"
            await (in_flight.commit() if first_commits else in_flight.rollback())
            assert (await duplicate).outcome is expected
    finally:
        await second.close()
    assert await count(databases.operational, "events") == 2


async def test_a_group_of_batches_commits_each_once_with_copies_inside_and_across_groups(
        databases: Databases) -> None:
    now = datetime.now(UTC)
    b = [batch(seq, Lane.BULK, [event(seq * 10 + i, now) for i in range(10)]) for seq in range(4)]
    first = await write_warehouse_batches(databases.warehouse, [b[0], b[1], b[1], b[2]])
    second = await write_warehouse_batches(databases.warehouse, [b[2], b[3], b[0]])
    committed, already = CommitOutcome.COMMITTED, CommitOutcome.ALREADY_COMMITTED
    assert [r.outcome for r in first] == [committed, committed, already, committed]
    assert [r.outcome for r in second] == [already, committed, already]
    assert [r.batch.seq for r in second] == [2, 3, 0]
    assert await count(databases.warehouse, "events") == 40
    assert await write_warehouse_batches(databases.warehouse, []) == []


async def test_concurrent_groups_overlapping_in_opposite_orders_neither_deadlock_nor_duplicate(
        databases: Databases) -> None:
    now = datetime.now(UTC)
    group = [batch(seq, Lane.PRIORITY, [alert(seq, now), state_change(seq, now)]) for seq in range(20)]
    second = await asyncpg.connect(databases.operational_dsn)
    try:
        results = await asyncio.gather(write_operational_batches(databases.operational, group),
                                       write_operational_batches(second, group[::-1]))
    finally:
        await second.close()
    outcomes = Counter(r.outcome for rs in results for r in rs)
    assert outcomes == {CommitOutcome.COMMITTED: 20, CommitOutcome.ALREADY_COMMITTED: 20}
    assert await count(databases.operational, "alerts") == 20
    assert await count(databases.operational, "state_changes") == 20


async def drops(conn: asyncpg.Connection) -> dict[tuple[str, str], int]:
    return {(r["kind"], r["reason"]): r["dropped"] for r in await conn.fetch("SELECT * FROM late_data_drops")}


async def test_late_data_beyond_retention_is_counted_once_and_dropped(databases: Databases) -> None:
    now = datetime.now(UTC)
    eight_days_old, eleven_days_old = now - timedelta(days=8), now - timedelta(days=11)
    sent = batch(0, Lane.BULK, [event(1, eight_days_old), event(2, eleven_days_old), sample(3, eleven_days_old),
                                event(4, now)])
    for _ in range(2):
        await deliver(databases, sent)
    beyond = DropReason.BEYOND_RETENTION.value
    # The operational DB keeps 7 days and the warehouse 10, so the eight-day-old event is only in the warehouse.
    assert await drops(databases.operational) == {("event", beyond): 2, ("performance", beyond): 1}
    assert await drops(databases.warehouse) == {("event", beyond): 1, ("performance", beyond): 1}
    assert await count(databases.operational, "events") == 1
    assert await count(databases.warehouse, "events") == 2
    assert await databases.operational.fetchval("SELECT items_dropped FROM committed_batches") == 3
    await deliver(databases, batch(1, Lane.BULK, [event(5, eleven_days_old)]))
    assert (await drops(databases.operational))["event", beyond] == 3


async def test_data_from_a_clock_days_ahead_is_counted_and_dropped(databases: Databases) -> None:
    await deliver(databases, batch(0, Lane.PRIORITY, [state_change(1, datetime.now(UTC) + timedelta(days=5))]))
    for database in Database:
        assert await drops(databases.conn(database)) == {("state", DropReason.AHEAD_OF_CLOCK.value): 1}
        assert await count(databases.conn(database), "state_changes") == 0


async def test_late_data_within_retention_creates_its_partition(databases: Databases) -> None:
    five_days_ago = datetime.now(UTC) - timedelta(days=5)
    day = partition_day(five_days_ago)
    assert ("performance_samples", day) not in await existing_partitions(databases.operational)
    results = await deliver(databases, batch(0, Lane.BULK, [sample(1, five_days_ago)]))
    assert {r.outcome for r in results.values()} == {CommitOutcome.COMMITTED}
    for database in Database:
        where = await databases.conn(database).fetchval("SELECT tableoid::regclass::text FROM performance_samples")
        assert where == partition_name("performance_samples", day)


async def test_a_repeated_alert_bumps_its_repeat_count_until_resolved(databases: Databases) -> None:
    now = datetime.now(UTC)
    op = databases.operational
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(1, now), alert(1, now + timedelta(minutes=1))]))
    await op.execute("UPDATE alerts SET resolution_state = $1", ResolutionState.ACKNOWLEDGED)
    replayed = batch(1, Lane.PRIORITY, [alert(1, now + timedelta(minutes=2))])
    await write_operational(op, replayed)
    await write_operational(op, replayed)
    row = await op.fetchrow("SELECT repeat_count, raised_at, last_raised_at, resolution_state FROM alerts")
    assert tuple(row) == (2, now, now + timedelta(minutes=2), ResolutionState.ACKNOWLEDGED)
    await write_operational(op, batch(2, Lane.PRIORITY, [alert(1, now + timedelta(minutes=3),
                                                               ResolutionState.RESOLVED),
                                                         alert(1, now + timedelta(minutes=4))]))
    rows = await op.fetch("SELECT resolution_state, repeat_count, resolved_at FROM alerts ORDER BY raised_at")
    assert [tuple(r) for r in rows] == [(ResolutionState.RESOLVED, 2, now + timedelta(minutes=3)),
                                        (ResolutionState.NEW, 0, None)]


async def test_discovery_keeps_the_newest_inventory_whatever_the_arrival_order(databases: Databases) -> None:
    now = datetime.now(UTC)
    op = databases.operational
    newer = DiscoveryItem(now, "Linux.FileSystem:/data1", "Linux.FileSystem", "/data1 (resized)", {"size": "200"})
    await write_operational(op, batch(1, Lane.PRIORITY, [newer]))
    await write_operational(op, batch(0, Lane.PRIORITY, [discovery(1, now - timedelta(hours=1))]))
    row = await op.fetchrow("SELECT agent, display_name, properties, discovered_at, last_seen_at "
                            "FROM discovered_objects")
    assert tuple(row) == (AGENT, "/data1 (resized)", '{"size": "200"}', now - timedelta(hours=1), now)


async def test_a_writers_connection_stores_every_instant_as_given_and_refuses_a_time_without_zone(
        databases: Databases) -> None:
    writer = await asyncpg.connect(databases.operational_dsn)
    try:
        await prepare_writer_connection(writer)  # the server's writers' own timestamptz codec
        now = datetime.now(UTC).replace(microsecond=123_456)
        east = now.astimezone(timezone(timedelta(hours=5, minutes=30)))
        earlier = now - timedelta(microseconds=1)
        await write_operational(writer, batch(0, Lane.BULK, [event(1, east), sample(2, earlier)]))
        read = databases.operational
        assert await read.fetchval("SELECT logged_at FROM events") == now
        assert await read.fetchval("SELECT sampled_at FROM performance_samples") == earlier
        assert await writer.fetchval("SELECT logged_at FROM events") == now
        assert await writer.fetchval("SELECT 'infinity'::timestamptz") == datetime.max
        with pytest.raises(asyncpg.DataError, match="has no time zone"):
            await writer.fetchval("SELECT $1::timestamptz", datetime(2026, 6, 1, 12))
    finally:
        await writer.close()


def wire_of(items: list[Item], seq: int) -> pb.DataBatch:
    """A bulk batch as an agent sends it."""
    wire = pb.DataBatch(epoch=str(uuid.uuid4()), seq=seq, lane=pb.LANE_BULK)
    for item in items:
        stamp = Timestamp()
        stamp.FromDatetime(item.timestamp)
        if isinstance(item, Event):
            wire.items.add().event.CopyFrom(pb.Event(
                logged_at=stamp, object_key=item.object_key, channel=item.channel, source=item.source,
                number=item.number, level=int(item.level), description=item.description))
        else:
            assert isinstance(item, PerformanceSample)
            wire.items.add().performance.CopyFrom(pb.PerformanceSample(
                sampled_at=stamp, object_key=item.object_key, object_name=item.object_name,
                counter_name=item.counter_name, instance_name=item.instance_name, value=item.value))
    return wire


async def rows_of(conn: asyncpg.Connection, table: str, sent: Batch) -> list[tuple[object, ...]]:
    """The batch's rows in `table`, without the epoch (the copies compared carry different ones)."""
    columns = ", ".join(column for column in TABLE_COLUMNS[table] if column != "batch_epoch")
    found = await conn.fetch(f"SELECT {columns} FROM {table} WHERE batch_epoch = $1 ORDER BY item_no", sent.epoch)
    return [tuple(row) for row in found]


async def test_a_batch_formed_from_the_wire_lands_as_the_same_rows_as_its_items(databases: Databases) -> None:
    """The server sends both databases the binary COPY tuples it made while converting a bulk batch; what lands is
    what the writers make of the items themselves, whatever the text, number or time."""
    now = datetime.now(UTC).replace(microsecond=0)
    items: list[Item] = [
        Event(now - timedelta(hours=30, microseconds=1), "Linux.Computer:wéb01 ☃", "syslog", "sshd", -(2**31),
              EventLevel.CRITICAL, "Failed password for ünïcode 🚀\ttab"),
        PerformanceSample(now - timedelta(microseconds=999_999), "k", "Processor", "% Processor Time", "", -0.5),
        PerformanceSample(now - timedelta(days=2, seconds=1), "k", "Memory", "Available MBytes", "_Total", 1e300),
        Event(now, "k" * 200, "c", "s", 2**31 - 1, EventLevel.VERBOSE, ""),
        PerformanceSample(now, "k", "Processor", "% Processor Time", "cpu1", 0.0)]
    formed = to_batch(AGENT, wire_of(items, 1))
    assert formed.items == tuple(items)
    model = Batch(AGENT, uuid.uuid4(), 1, Lane.BULK, formed.items)  # encoded by asyncpg, row by row
    group = [to_batch(AGENT, wire_of(items[:2], 2)), Batch(AGENT, uuid.uuid4(), 2, Lane.BULK, tuple(items[2:]))]
    for database, write in ((Database.OPERATIONAL, write_operational_batches),
                            (Database.WAREHOUSE, write_warehouse_batches)):
        conn = databases.conn(database)
        await prepare_writer_connection(conn)
        for sent in (formed, model):
            await write(conn, [sent])
        await write(conn, group)  # a group of a formed batch and a model one
        for table in ("events", "performance_samples"):
            assert await rows_of(conn, table, formed) == await rows_of(conn, table, model)
            assert len(await rows_of(conn, table, model)) == (2 if table == "events" else 3)
        # Item numbers of the group's rows: the formed batch's item 0 and 1, the model batch's 0, 1 and 2.
        numbers = {(table, n): [row[-1] for row in await rows_of(conn, table, sent)]
                   for table in ("events", "performance_samples") for n, sent in enumerate(group)}
        assert numbers == {("events", 0): [0], ("events", 1): [1],
                           ("performance_samples", 0): [1], ("performance_samples", 1): [0, 2]}
