"""From the wire to the writers' model (pure): a DataBatch becomes a `db.model.Batch`, or InvalidBatch says why not.

Everything a database would refuse is refused here, per batch, because the writers commit several agents' batches
in one transaction: one bad value must never fail the others' commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import TypeVar
from uuid import UUID

from google.protobuf.timestamp_pb2 import Timestamp

from opsmgr.db.model import (
    Alert,
    AlertPriority,
    AlertSeverity,
    Batch,
    Database,
    DiscoveryItem,
    Event,
    EventLevel,
    HealthState,
    InvalidBatch,
    Item,
    Lane,
    PerformanceSample,
    ResolutionState,
    StateChange,
)
from opsmgr.db.routing import databases_for
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.limits import MAX_BATCH_ITEMS, MAX_DISCOVERY_PROPERTIES, MAX_KEY_CHARS, MAX_STRING_CHARS

_E = TypeVar("_E", bound=IntEnum)
_INT32 = (-(2**31), 2**31 - 1)
_MAX_SEQ = 2**63 - 1  # committed_batches.batch_seq is a PostgreSQL bigint; the wire's uint64 reaches beyond it
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # events.number is a PostgreSQL integer

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
    items = tuple(_item(index, item) for index, item in enumerate(wire.items))
    return Batch(agent, epoch, wire.seq, lane, items)


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
    where = f"batch.items[{index}]"
    kind = wire.WhichOneof("kind")
    if kind == "event":
        e = wire.event
        _texts(where, (("object_key", e.object_key, MAX_KEY_CHARS), ("channel", e.channel, MAX_KEY_CHARS),
                       ("source", e.source, MAX_KEY_CHARS), ("description", e.description, MAX_STRING_CHARS)))
        if not _INT32[0] <= e.number <= _INT32[1]:
            raise InvalidBatch(f"{where}.number = {e.number}: outside 32-bit range. Fix: send the event id as "
                               "the source logged it")
        return Event(_time(where, "logged_at", e.logged_at, e.HasField("logged_at")), e.object_key, e.channel,
                     e.source, e.number, _enum(EventLevel, where, "level", e.level), e.description)
    if kind == "performance":
        p = wire.performance
        _texts(where, (("object_key", p.object_key, MAX_KEY_CHARS), ("object_name", p.object_name, MAX_KEY_CHARS),
                       ("counter_name", p.counter_name, MAX_KEY_CHARS),
                       ("instance_name", p.instance_name, MAX_KEY_CHARS)))
        return PerformanceSample(_time(where, "sampled_at", p.sampled_at, p.HasField("sampled_at")), p.object_key,
                                 p.object_name, p.counter_name, p.instance_name, p.value)
    if kind == "state":
        s = wire.state
        _texts(where, (("object_key", s.object_key, MAX_KEY_CHARS), ("monitor", s.monitor, MAX_KEY_CHARS)))
        return StateChange(_time(where, "changed_at", s.changed_at, s.HasField("changed_at")), s.object_key,
                           s.monitor, _enum(HealthState, where, "old_state", s.old_state),
                           _enum(HealthState, where, "new_state", s.new_state))
    if kind == "alert":
        a = wire.alert
        _texts(where, (("object_key", a.object_key, MAX_KEY_CHARS), ("source", a.source, MAX_KEY_CHARS),
                       ("name", a.name, MAX_KEY_CHARS), ("description", a.description, MAX_STRING_CHARS)))
        return Alert(_time(where, "raised_at", a.raised_at, a.HasField("raised_at")), a.object_key, a.source, a.name,
                     a.description, _enum(AlertSeverity, where, "severity", a.severity),
                     _enum(AlertPriority, where, "priority", a.priority),
                     _enum(ResolutionState, where, "resolution_state", a.resolution_state))
    if kind == "discovery":
        d = wire.discovery
        _texts(where, (("object_key", d.object_key, MAX_KEY_CHARS), ("class_name", d.class_name, MAX_KEY_CHARS),
                       ("display_name", d.display_name, MAX_STRING_CHARS)))
        if len(d.properties) > MAX_DISCOVERY_PROPERTIES:
            raise InvalidBatch(f"{where}.properties holds {len(d.properties)} entries: more than "
                               f"{MAX_DISCOVERY_PROPERTIES}. Fix: discover fewer properties")
        for key, value in d.properties.items():
            _texts(f"{where}.properties", (("key", key, MAX_KEY_CHARS), (key[:64], value, MAX_STRING_CHARS)))
        return DiscoveryItem(_time(where, "discovered_at", d.discovered_at, d.HasField("discovered_at")),
                             d.object_key, d.class_name, d.display_name, dict(d.properties))
    raise InvalidBatch(f"{where} carries no item. Fix: set one of event, performance, state, alert or discovery")


def _texts(where: str, fields: Iterable[tuple[str, str, int]]) -> None:
    for name, value, limit in fields:
        if len(value) > limit:
            raise InvalidBatch(f"{where}.{name} is {len(value)} characters: more than {limit}. Fix: shorten it at "
                               "the source; text is refused, never silently cut")
        if "\x00" in value:
            raise InvalidBatch(f"{where}.{name} contains a NUL character, which PostgreSQL text refuses. Fix: strip "
                               "it at the source")


def _time(where: str, name: str, value: Timestamp, present: bool) -> datetime:
    if not present:
        raise InvalidBatch(f"{where}.{name} is unset. Fix: stamp every item with the time it happened (UTC)")
    try:
        # Arithmetic instead of Timestamp.ToDatetime: a third of the conversion's cost at bulk rates.
        return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
    except OverflowError:
        raise InvalidBatch(f"{where}.{name} = {value.seconds}s: not a representable time. Fix: send a time between "
                           "years 1 and 9999") from None


def _enum(enum: type[_E], where: str, name: str, value: int) -> _E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(f"{member.value} ({member.name.lower()})" for member in enum)
        raise InvalidBatch(f"{where}.{name} = {value}: not one of {allowed}. Fix: send one of those") from None
