"""DataBatch to db.model.Batch: what a database would refuse is refused here, naming the field and the fix."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from opsmgr.db.aggregation import late_hour_marks, late_hour_marks_of_spans
from opsmgr.db.model import Alert, Batch, Database, Event, InvalidBatch, Lane, Retention
from opsmgr.db.routing import plan_write
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.limits import MAX_BATCH_ITEMS, MAX_KEY_CHARS, MAX_STRING_CHARS
from opsmgr.server.convert import owed_databases, to_batch

AGENT = "web01.contoso.test"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def ts() -> Timestamp:
    value = Timestamp()
    value.FromDatetime(NOW)
    return value


def event(**fields: object) -> pb.Item:
    values: dict[str, object] = {"logged_at": ts(), "object_key": "Linux.Computer:web01", "channel": "syslog",
                                 "source": "sshd", "number": 4625, "level": 3, "description": "failed"}
    values.update(fields)
    return pb.Item(event=pb.Event(**values))  # type: ignore[arg-type]


def sample(**fields: object) -> pb.Item:
    values: dict[str, object] = {"sampled_at": ts(), "object_key": "Linux.Computer:web01", "object_name": "Processor",
                                 "counter_name": "% Processor Time", "instance_name": "_Total", "value": 12.5}
    values.update(fields)
    return pb.Item(performance=pb.PerformanceSample(**values))  # type: ignore[arg-type]


def state(**fields: object) -> pb.Item:
    values: dict[str, object] = {"changed_at": ts(), "object_key": "Linux.FileSystem:/data", "monitor": "FreeSpace",
                                 "old_state": 1, "new_state": 2}
    values.update(fields)
    return pb.Item(state=pb.StateChange(**values))  # type: ignore[arg-type]


def alert() -> pb.Item:
    return pb.Item(alert=pb.Alert(raised_at=ts(), object_key="k", source="s", name="n", severity=2, priority=1))


def batch(*items: pb.Item, lane: pb.Lane = pb.LANE_BULK, epoch: str | None = None) -> pb.DataBatch:
    return pb.DataBatch(epoch=epoch or str(uuid.uuid4()), seq=7, lane=lane, items=items)


def test_a_bulk_batch_becomes_the_writers_model_with_aware_times() -> None:
    wire = batch(event())
    converted = to_batch(AGENT, wire)
    assert (converted.agent, converted.seq, converted.lane) == (AGENT, 7, Lane.BULK)
    assert converted.items == (Event(NOW, "Linux.Computer:web01", "syslog", "sshd", 4625, 3, "failed"),)  # type: ignore[arg-type]
    assert owed_databases(converted, wire) == {Database.OPERATIONAL, Database.WAREHOUSE}


def test_a_priority_batch_of_alerts_is_owed_to_the_operational_db_alone() -> None:
    wire = batch(alert(), lane=pb.LANE_PRIORITY)
    converted = to_batch(AGENT, wire)
    assert isinstance(converted.items[0], Alert)
    assert owed_databases(converted, wire) == {Database.OPERATIONAL}


def test_a_replay_may_name_a_subset_of_its_databases_but_never_another() -> None:
    wire = batch(event())
    wire.databases[:] = [pb.DATABASE_WAREHOUSE]
    assert owed_databases(to_batch(AGENT, wire), wire) == {Database.WAREHOUSE}
    alerts = batch(alert(), lane=pb.LANE_PRIORITY)
    alerts.databases[:] = [pb.DATABASE_WAREHOUSE]
    with pytest.raises(InvalidBatch, match="does not belong to"):
        owed_databases(to_batch(AGENT, alerts), alerts)


@pytest.mark.parametrize(("wire", "message"), [
    (batch(event(), epoch="nope"), r"batch.epoch = 'nope': not a UUID"),
    (batch(event(), lane=pb.LANE_UNSPECIFIED), "batch.lane = 0: not a lane"),
    (batch(alert(), lane=pb.LANE_BULK), r"batch.items\[0\] is alert data in the bulk lane"),
    (batch(event(level=9)), r"batch.items\[0\].level = 9: not one of 1 \(critical\)"),
    (batch(event(number=2**40)), "outside 32-bit range"),
    (batch(event(description="x" * (MAX_STRING_CHARS + 1))), "never silently cut"),
    (batch(event(source="a\x00b")), "NUL character"),
    (batch(sample(), sample(counter_name="c" * (MAX_KEY_CHARS + 1))),
     rf"batch.items\[1\].counter_name is {MAX_KEY_CHARS + 1} characters"),
    (batch(sample(instance_name="cpu\x000")), r"batch.items\[0\].instance_name contains a NUL"),
    (batch(state(monitor="m" * (MAX_KEY_CHARS + 1)), lane=pb.LANE_PRIORITY), r"batch.items\[0\].monitor is"),
    (batch(state(new_state=7), lane=pb.LANE_PRIORITY), r"batch.items\[0\].new_state = 7: not one of 0 \(unknown\)"),
    (batch(event(channel="x" * (MAX_KEY_CHARS + 1))), r"batch.items\[0\].channel is"),
    (batch(pb.Item(event=pb.Event(object_key="k", level=3))), r"logged_at is unset"),
    (batch(pb.Item()), "carries no item"),
    (batch(sample(), event(object_key="")), r"batch.items\[1\].object_key is empty"),
    (batch(event(), sample(object_key="")), r"batch.items\[1\].object_key is empty"),
    (batch(sample(), state(), sample()), r"batch.items\[1\] is state data in the bulk lane"),
    (batch(sample(), sample(sampled_at=Timestamp(seconds=10**12))), r"batch.items\[1\].sampled_at = .*not a repr"),
    (batch(*[event()] * (MAX_BATCH_ITEMS + 1)), f"more than {MAX_BATCH_ITEMS}"),
    (pb.DataBatch(epoch=str(uuid.uuid4()), seq=2**63, lane=pb.LANE_BULK, items=[event()]),
     "batch.seq = 9223372036854775808: beyond 9223372036854775807"),
])
def test_what_a_database_would_refuse_is_refused_with_the_field_named(wire: pb.DataBatch, message: str) -> None:
    with pytest.raises(InvalidBatch, match=message):
        to_batch(AGENT, wire)


def test_times_keep_microseconds_and_absurd_ones_are_refused() -> None:
    moment = Timestamp(seconds=1_780_000_000, nanos=123_456_789)
    converted = to_batch(AGENT, batch(event(logged_at=moment)))
    assert converted.items[0].timestamp == moment.ToDatetime(tzinfo=UTC)
    with pytest.raises(InvalidBatch, match="not a representable time"):
        to_batch(AGENT, batch(event(logged_at=Timestamp(seconds=10**12))))


def test_keys_are_limited_one_by_one_not_together() -> None:
    long = "k" * MAX_KEY_CHARS
    converted = to_batch(AGENT, batch(sample(object_key=long, object_name=long, counter_name=long,
                                             instance_name=long)))
    assert converted.items[0].object_key == long
    assert converted.items[0].instance_name == long  # type: ignore[union-attr]


def test_a_time_set_to_the_epoch_is_a_time_not_a_missing_one() -> None:
    converted = to_batch(AGENT, batch(event(logged_at=Timestamp(seconds=0, nanos=0))))
    assert converted.items[0].timestamp == datetime(1970, 1, 1, tzinfo=UTC)


def test_a_bulk_batch_is_written_as_the_rows_of_its_items_in_order() -> None:
    """A bulk batch formed from the wire plans as the batch of its items: the same rows (a formed batch makes them
    from its items on demand), counts and partitions, item numbers in wire order. Its COPY tuples, which the writers
    send instead of the rows, are held to the rows in real PostgreSQL (tests/integration/db/test_writers.py)."""
    later = Timestamp(seconds=int(NOW.timestamp()) + 61, nanos=999_999_999)
    wire = batch(sample(), event(logged_at=later), sample(instance_name="cpu1", value=-0.5), event(level=1))
    converted = to_batch(AGENT, wire)
    rebuilt = Batch(converted.agent, converted.epoch, converted.seq, converted.lane, converted.items)
    for database in Database:
        planned, expected = (plan_write(b, database, Retention(), NOW) for b in (converted, rebuilt))
        assert planned.rows == expected.rows
        assert planned.partitions == expected.partitions and planned.written == expected.written
    assert [row[-1] for row in planned.rows["events"]] == [1, 3]


def test_times_at_the_ends_of_the_representable_range_convert_exactly() -> None:
    for moment in (Timestamp(seconds=-62_135_596_800, nanos=0), Timestamp(seconds=253_402_300_799, nanos=999_999_000)):
        converted = to_batch(AGENT, batch(sample(sampled_at=moment)))
        assert converted.items[0].timestamp == moment.ToDatetime(tzinfo=UTC)


def test_a_bulk_batch_is_planned_and_marked_without_making_its_items_and_they_are_what_they_were() -> None:
    """The server forms a bulk batch's COPY tuples from the wire and makes its items (a datetime each) only if asked;
    planning it for both databases and marking its late hours must not ask, and what is made later is exact."""
    wire = batch(sample(), event(logged_at=Timestamp(seconds=int(NOW.timestamp()) - 7200, nanos=5_000)),
                 sample(instance_name="cpu1", value=-0.5, sampled_at=Timestamp(seconds=int(NOW.timestamp()) + 59)))
    converted = to_batch(AGENT, wire)
    assert converted.size == 3 and {kind.value for kind in converted.kinds()} == {"event", "performance"}
    plans = {database: plan_write(converted, database, Retention(), NOW) for database in Database}
    marks = late_hour_marks_of_spans([(AGENT, plans[Database.WAREHOUSE].spans, plans[Database.WAREHOUSE].rows)])
    assert plans[Database.OPERATIONAL].written == plans[Database.WAREHOUSE].written
    assert set(plans[Database.WAREHOUSE].copy_tuples) == {"events", "performance_samples"}
    with pytest.raises(AttributeError):
        object.__getattribute__(converted, "items")  # still not made
    rebuilt = Batch(AGENT, converted.epoch, converted.seq, Lane.BULK, converted.items)  # made now: checked again
    assert [item.timestamp for item in converted.items] == [
        NOW, datetime(2026, 6, 1, 10, 0, 0, 5, tzinfo=UTC), datetime(2026, 6, 1, 12, 0, 59, tzinfo=UTC)]
    for database in Database:
        expected = plan_write(rebuilt, database, Retention(), NOW)
        assert plans[database].rows == expected.rows and plans[database].spans == expected.spans
        assert plans[database].written == expected.written and plans[database].partitions == expected.partitions
    assert marks == late_hour_marks(plans[Database.WAREHOUSE].rows)


def test_a_formed_batch_is_freed_as_soon_as_it_is_dropped_without_the_cyclic_collector() -> None:
    """The server runs Python's cyclic collector rarely (its young generation is large for ingest's sake): a batch
    whose parts referred back to it stayed in memory long after its acks, 15 KB more server RSS per fleet agent."""
    wires = [batch(sample(), event(), sample(instance_name="cpu1")), batch(alert(), state(), lane=pb.LANE_PRIORITY)]
    gc.collect()
    gc.disable()
    try:
        for wire in wires:
            converted = to_batch(AGENT, wire)
            for database in Database:
                plan_write(converted, database, Retention(), NOW)
            del converted
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0
