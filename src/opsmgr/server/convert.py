"""From the wire to the writers' model (pure): a DataBatch becomes a `db.model.Batch`, or InvalidBatch says why not.

Everything a database would refuse is refused here, per batch, because the writers commit several agents' batches
in one transaction: one bad value must never fail the others' commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import partial
from typing import TypeVar
from uuid import UUID

from google.protobuf.message import Message

from opsmgr.db.copy_format import (
    PG_EPOCH_MICROSECONDS,
    TupleParts,
    float8_field,
    int2_field,
    int4_field,
    key_field,
    text_field,
    time_field,
)
from opsmgr.db.model import (
    Alert,
    AlertPriority,
    AlertSeverity,
    Batch,
    Database,
    DeferredItems,
    DiscoveryItem,
    Event,
    EventLevel,
    HealthState,
    InvalidBatch,
    Item,
    ItemKind,
    Lane,
    PerformanceSample,
    ResolutionState,
    StateChange,
)
from opsmgr.db.partitions import PARTITIONED_TABLES
from opsmgr.db.routing import attach_bulk_series, databases_for
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.limits import MAX_BATCH_ITEMS, MAX_DISCOVERY_PROPERTIES, MAX_KEY_CHARS, MAX_STRING_CHARS

_E = TypeVar("_E", bound=IntEnum)
_INT32 = (-(2**31), 2**31 - 1)
_MAX_SEQ = 2**63 - 1  # committed_batches.batch_seq is a PostgreSQL bigint; the wire's uint64 reaches beyond it
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # events.number is a PostgreSQL integer
_MICROSECOND = timedelta(microseconds=1)
# Wire seconds whose time is representable whatever the nanos (an int32: at most 2.2 s either way).
_SAFE_SECONDS = (int((datetime.min.replace(tzinfo=UTC) - _EPOCH).total_seconds()) + 3,
                 int((datetime.max.replace(tzinfo=UTC) - _EPOCH).total_seconds()) - 3)

LANES = {pb.LANE_PRIORITY: Lane.PRIORITY, pb.LANE_BULK: Lane.BULK}
DATABASES = {pb.DATABASE_OPERATIONAL: Database.OPERATIONAL, pb.DATABASE_WAREHOUSE: Database.WAREHOUSE}
WIRE_DATABASES = {database: wire for wire, database in DATABASES.items()}


def parse_epoch(value: str, field: str = "batch.epoch") -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise InvalidBatch(f"{field} = {value[:64]!r}: not a UUID. Fix: send the UUID minted with the agent's "
                           "queue") from None


def to_batch(agent: str, wire: pb.DataBatch) -> Batch:
    """The model batch `agent` sent; raises InvalidBatch naming the field, the value and the fix."""
    epoch = parse_epoch(wire.epoch)
    if wire.seq > _MAX_SEQ:
        # Refused here: in the database it would fail the whole group commit, other agents' batches with it.
        raise InvalidBatch(f"batch.seq = {wire.seq}: beyond {_MAX_SEQ}. Fix: number batches from 0 within an epoch")
    lane = LANES.get(wire.lane)
    if lane is None:
        raise InvalidBatch(f"batch.lane = {wire.lane}: not a lane. Fix: send LANE_PRIORITY or LANE_BULK")
    if len(wire.items) > MAX_BATCH_ITEMS:
        raise InvalidBatch(f"batch.items holds {len(wire.items)} items: more than {MAX_BATCH_ITEMS}. Fix: form "
                           "smaller batches")
    return _formed(agent, epoch, lane, wire)


def _formed(agent: str, epoch: UUID, lane: Lane, wire: pb.DataBatch) -> Batch:
    if lane is Lane.BULK:
        deferred = _bulk(agent, epoch, wire)
        if deferred is not None:
            return deferred
    # The priority lane, and a bulk batch the quick path left alone (an item of another kind or without an object
    # key): each item made, Batch checks them and says what is wrong.
    return Batch(agent, epoch, wire.seq, lane, _items(wire))


def _items(wire: pb.DataBatch) -> tuple[Item, ...]:
    return tuple(_item(index, wire_item) for index, wire_item in enumerate(wire.items))


def _bulk(agent: str, epoch: UUID, wire: pb.DataBatch) -> Batch | None:
    """A bulk batch of events and performance samples as a deferred batch with its rows as COPY tuples, checked as
    `_item` and Batch check each item; None if an item needs the full path (`_formed` says why it is refused).

    Events and performance samples are nearly every item ingested. Their COPY tuples are made straight from the
    wire, and their items (each with a datetime) only if something asks (opsmgr.db.model.Batch.deferred): making
    them cost a quarter of the server's time per item. The checks are in the order, and say what, _item's do; only
    a failing one calls a function that builds the message.
    """
    seq, levels = wire.seq, _MEMBERS[EventLevel]
    # PostgreSQL's binary COPY tuples of the rows, which the writers send to both databases (db.copy_format).
    event_tuples: list[bytes] = []
    sample_tuples: list[bytes] = []
    event_times: list[int] = []  # microseconds since 1970, for each table's oldest and newest row
    sample_times: list[int] = []
    parts, keys = TupleParts(agent, epoch, seq), dict[str, bytes]()
    message: Message  # the item's own message, whose time _time reads when the quick path does not take it
    for index, wire_item in enumerate(wire.items):
        kind = wire_item.WhichOneof("kind")
        if kind == "performance":
            p = message = wire_item.performance
            key, obj, counter, instance, value = p.object_key, p.object_name, p.counter_name, p.instance_name, p.value
            if not key:
                return None
            if not _short_texts(key, obj, counter, instance):
                _texts(index, (("object_key", key, MAX_KEY_CHARS), ("object_name", obj, MAX_KEY_CHARS),
                               ("counter_name", counter, MAX_KEY_CHARS), ("instance_name", instance, MAX_KEY_CHARS)))
            stamp, stamp_name = p.sampled_at, "sampled_at"
        elif kind == "event":
            e = message = wire_item.event
            key, channel, source, description = e.object_key, e.channel, e.source, e.description
            if not key:
                return None
            if not _short_texts(key, channel, source) or len(description) > MAX_STRING_CHARS or "\x00" in description:
                _texts(index, (("object_key", key, MAX_KEY_CHARS), ("channel", channel, MAX_KEY_CHARS),
                               ("source", source, MAX_KEY_CHARS), ("description", description, MAX_STRING_CHARS)))
            number = e.number
            if not _INT32[0] <= number <= _INT32[1]:
                raise InvalidBatch(f"batch.items[{index}].number = {number}: outside 32-bit range. Fix: send the "
                                   "event id as the source logged it")
            stamp, stamp_name = e.logged_at, "logged_at"
        else:
            return None
        seconds, nanos = stamp.seconds, stamp.nanos
        if not ((seconds or nanos) and _SAFE_SECONDS[0] <= seconds <= _SAFE_SECONDS[1]):
            _time(index, stamp_name, message)  # unset or out of range: refused, naming the field
        micros = seconds * 1_000_000 + nanos // 1000  # the very microseconds _time's datetime holds
        wire_time = time_field(8, micros - PG_EPOCH_MICROSECONDS)
        if kind == "performance":
            sample_times.append(micros)
            sample_tuples.append(b"".join((
                parts.sample_head, wire_time, keys.get(key) or key_field(keys, key),
                keys.get(obj) or key_field(keys, obj), keys.get(counter) or key_field(keys, counter),
                keys.get(instance) or key_field(keys, instance), float8_field(8, value), parts.tail,
                int4_field(4, index))))
        else:
            level = levels.get(e.level) or _enum(EventLevel, index, "level", e.level)  # (levels are 1 to 5)
            event_times.append(micros)
            event_tuples.append(b"".join((
                parts.event_head, wire_time, keys.get(key) or key_field(keys, key),
                keys.get(channel) or key_field(keys, channel), keys.get(source) or key_field(keys, source),
                int4_field(4, number), int2_field(2, level), text_field(description), parts.tail,
                int4_field(4, index))))
    kinds = frozenset(kind for kind, times in ((ItemKind.EVENT, event_times), (ItemKind.PERFORMANCE, sample_times))
                      if times)
    batch = Batch.deferred(agent, epoch, seq, Lane.BULK, DeferredItems(kinds, len(wire.items), partial(_items, wire)))
    event_table, sample_table = PARTITIONED_TABLES[ItemKind.EVENT], PARTITIONED_TABLES[ItemKind.PERFORMANCE]
    tables = {table: times for table, times in ((event_table, event_times), (sample_table, sample_times)) if times}
    attach_bulk_series(
        batch, {event_table: b"".join(event_tuples), sample_table: b"".join(sample_tuples)},
        {table: len(times) for table, times in tables.items()},
        {table: (_EPOCH + _MICROSECOND * min(times), _EPOCH + _MICROSECOND * max(times))
         for table, times in tables.items()})
    return batch


def owed_databases(batch: Batch, wire: pb.DataBatch) -> frozenset[Database]:
    """The databases this send must reach: all the batch belongs to, or the subset a replay names."""
    belongs = databases_for(batch)
    if not wire.databases:
        return belongs
    named = set()
    for value in wire.databases:
        database = DATABASES.get(value)
        if database is None or database not in belongs:
            allowed = ", ".join(sorted(pb.Database.Name(WIRE_DATABASES[d]) for d in belongs))
            raise InvalidBatch(f"batch.databases names {value}, which this batch does not belong to. Fix: name "
                               f"only {allowed}")
        named.add(database)
    return frozenset(named)


def _item(index: int, wire: pb.Item) -> Item:
    """The item of `wire`, checked (for events and performance samples, what `_bulk` checks in its quick path)."""
    # Only a failing check builds the message (_texts, _enum, _time name the field, the value and the fix).
    kind = wire.WhichOneof("kind")
    if kind == "performance":
        p = wire.performance
        _texts(index, (("object_key", p.object_key, MAX_KEY_CHARS), ("object_name", p.object_name, MAX_KEY_CHARS),
                       ("counter_name", p.counter_name, MAX_KEY_CHARS),
                       ("instance_name", p.instance_name, MAX_KEY_CHARS)))
        return PerformanceSample(_time(index, "sampled_at", p), p.object_key, p.object_name, p.counter_name,
                                 p.instance_name, p.value)
    if kind == "event":
        e = wire.event
        _texts(index, (("object_key", e.object_key, MAX_KEY_CHARS), ("channel", e.channel, MAX_KEY_CHARS),
                       ("source", e.source, MAX_KEY_CHARS), ("description", e.description, MAX_STRING_CHARS)))
        if not _INT32[0] <= e.number <= _INT32[1]:
            raise InvalidBatch(f"batch.items[{index}].number = {e.number}: outside 32-bit range. Fix: send the "
                               "event id as the source logged it")
        return Event(_time(index, "logged_at", e), e.object_key, e.channel, e.source, e.number,
                     _enum(EventLevel, index, "level", e.level), e.description)
    if kind == "state":
        s = wire.state
        key, monitor = s.object_key, s.monitor
        if not _short_texts(key, monitor):
            _texts(index, (("object_key", key, MAX_KEY_CHARS), ("monitor", monitor, MAX_KEY_CHARS)))
        return _new(StateChange, (_time(index, "changed_at", s), key, monitor,
                                  _enum(HealthState, index, "old_state", s.old_state),
                                  _enum(HealthState, index, "new_state", s.new_state)))
    if kind == "alert":
        a = wire.alert
        _texts(index, (("object_key", a.object_key, MAX_KEY_CHARS), ("source", a.source, MAX_KEY_CHARS),
                       ("name", a.name, MAX_KEY_CHARS), ("description", a.description, MAX_STRING_CHARS)))
        return Alert(_time(index, "raised_at", a), a.object_key, a.source, a.name,
                     a.description, _enum(AlertSeverity, index, "severity", a.severity),
                     _enum(AlertPriority, index, "priority", a.priority),
                     _enum(ResolutionState, index, "resolution_state", a.resolution_state))
    if kind == "discovery":
        d = wire.discovery
        where = f"batch.items[{index}]"
        _texts(index, (("object_key", d.object_key, MAX_KEY_CHARS), ("class_name", d.class_name, MAX_KEY_CHARS),
                       ("display_name", d.display_name, MAX_STRING_CHARS)))
        if len(d.properties) > MAX_DISCOVERY_PROPERTIES:
            raise InvalidBatch(f"{where}.properties holds {len(d.properties)} entries: more than "
                               f"{MAX_DISCOVERY_PROPERTIES}. Fix: discover fewer properties")
        for key, value in d.properties.items():
            _texts(index, (("key", key, MAX_KEY_CHARS), (key[:64], value, MAX_STRING_CHARS)), ".properties")
        return DiscoveryItem(_time(index, "discovered_at", d),
                             d.object_key, d.class_name, d.display_name, dict(d.properties))
    raise InvalidBatch(f"batch.items[{index}] carries no item. Fix: set one of event, performance, state, alert or "
                       "discovery")


# Builds a named tuple from a tuple of its fields in C: calling the class runs its generated Python __new__, which
# cost as much per item as all the field checks. Only for the time-series items, whose fields are checked here.
_new = tuple.__new__


def _short_texts(*keys: str) -> bool:
    """Whether these key fields are all within MAX_KEY_CHARS and free of NUL: the check _texts makes, at a quarter
    of its cost, for the items that pass it (together, the keys usually fit in the limit of one)."""
    joined = "".join(keys)
    return (len(joined) <= MAX_KEY_CHARS or max(map(len, keys)) <= MAX_KEY_CHARS) and "\x00" not in joined


def _texts(index: int, fields: Iterable[tuple[str, str, int]], within: str = "") -> None:
    for name, value, limit in fields:
        if len(value) > limit:
            raise InvalidBatch(f"batch.items[{index}]{within}.{name} is {len(value)} characters: more than {limit}. "
                               "Fix: shorten it at the source; text is refused, never silently cut")
        if "\x00" in value:
            raise InvalidBatch(f"batch.items[{index}]{within}.{name} contains a NUL character, which PostgreSQL "
                               "text refuses. Fix: strip it at the source")


def _time(index: int, name: str, message: Message) -> datetime:
    value = getattr(message, name)
    seconds, nanos = value.seconds, value.nanos
    # HasField only when the time reads as the epoch: set or not, an unset time reads so, and HasField is dear.
    if not (seconds or nanos) and not message.HasField(name):
        raise InvalidBatch(f"batch.items[{index}].{name} is unset. Fix: stamp every item with the time it happened "
                           "(UTC)")
    try:
        # Arithmetic instead of Timestamp.ToDatetime (a third of the conversion's cost at bulk rates); a multiple
        # of one microsecond, which costs a quarter less than constructing the timedelta (its constructor
        # normalises each argument through Python numbers).
        microseconds: int = seconds * 1_000_000 + nanos // 1000
        return _EPOCH + _MICROSECOND * microseconds
    except OverflowError:
        raise InvalidBatch(f"batch.items[{index}].{name} = {seconds}s: not a representable time. Fix: send a time "
                           "between years 1 and 9999") from None


def _enum(enum: type[_E], index: int, name: str, value: int) -> _E:
    member = _MEMBERS[enum].get(value)  # a dict lookup: calling an IntEnum costs ten times as much
    if member is None:
        allowed = ", ".join(f"{member.value} ({member.name.lower()})" for member in enum)
        raise InvalidBatch(f"batch.items[{index}].{name} = {value}: not one of {allowed}. Fix: send one of those")
    return member  # type: ignore[return-value]


_MEMBERS: dict[type[IntEnum], dict[int, IntEnum]] = {
    enum: {member.value: member for member in enum}
    for enum in (EventLevel, HealthState, AlertSeverity, AlertPriority, ResolutionState)}
