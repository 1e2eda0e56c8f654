"""How the queue classifies a protobuf `Item`: its kind (numbered in eviction order), lane and databases.

The on-disk payload of an item is exactly its wire encoding, so what the server receives is byte-for-byte what
was made durable. The routing mirrors the server's (alerts and discovery to the operational DB only; events,
performance and state to both); the agent may not import `opsmgr.db`, so a unit test holds the two together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum, IntFlag

from opsmgr.protocol import agent_channel_pb2 as pb


class ItemKind(IntEnum):
    """Item kinds, numbered in eviction order: a full queue gives up the lowest number first."""

    PERFORMANCE = 0  # the next sample replaces it in meaning
    EVENT = 1
    DISCOVERY = 2  # the next discovery cycle sends the whole inventory again
    STATE = 3  # a lost transition leaves health wrong until the monitor changes again
    ALERT = 4  # the last thing to lose: a person acts on it

    @property
    def label(self) -> str:
        """The name the server and the console use (`QueueStatus.evicted_by_kind` keys)."""
        return self.name.lower()


class Lane(IntEnum):
    """The wire values of `Lane`: priority items never wait behind a bulk backlog."""

    PRIORITY = pb.LANE_PRIORITY
    BULK = pb.LANE_BULK


class Databases(IntFlag):
    """Which databases must acknowledge a batch before it may leave the queue (stored as a bit mask)."""

    OPERATIONAL = 1
    WAREHOUSE = 2

    @classmethod
    def from_wire(cls, database: int) -> Databases:
        """The databases one `Ack.database` speaks for: UNSPECIFIED (a rejection) speaks for all."""
        if database == pb.DATABASE_OPERATIONAL:
            return cls.OPERATIONAL
        if database == pb.DATABASE_WAREHOUSE:
            return cls.WAREHOUSE
        return cls.OPERATIONAL | cls.WAREHOUSE

    def to_wire(self) -> list[int]:
        return [wire for flag, wire in ((Databases.OPERATIONAL, pb.DATABASE_OPERATIONAL),
                                        (Databases.WAREHOUSE, pb.DATABASE_WAREHOUSE)) if flag in self]


_ONEOF = {"performance": ItemKind.PERFORMANCE, "event": ItemKind.EVENT, "discovery": ItemKind.DISCOVERY,
          "state": ItemKind.STATE, "alert": ItemKind.ALERT}

LANE_OF: Mapping[ItemKind, Lane] = {
    ItemKind.ALERT: Lane.PRIORITY, ItemKind.STATE: Lane.PRIORITY, ItemKind.DISCOVERY: Lane.PRIORITY,
    ItemKind.EVENT: Lane.BULK, ItemKind.PERFORMANCE: Lane.BULK,
}

ROUTES: Mapping[ItemKind, Databases] = {
    ItemKind.EVENT: Databases.OPERATIONAL | Databases.WAREHOUSE,
    ItemKind.PERFORMANCE: Databases.OPERATIONAL | Databases.WAREHOUSE,
    ItemKind.STATE: Databases.OPERATIONAL | Databases.WAREHOUSE,
    ItemKind.ALERT: Databases.OPERATIONAL,
    ItemKind.DISCOVERY: Databases.OPERATIONAL,
}


class InvalidItem(ValueError):
    """An item the agent will not queue: it has no kind, so no lane or database could take it."""


def kind_of(item: pb.Item) -> ItemKind:
    which = item.WhichOneof("kind")
    if which is None:
        raise InvalidItem("Item has no kind set: set one of event, performance, state, alert or discovery")
    return _ONEOF[which]


def databases_for(kinds: Iterable[ItemKind]) -> Databases:
    """Every database a batch of these kinds is written to; an empty batch is recorded by the operational DB."""
    needed = Databases(0)
    for kind in kinds:
        needed |= ROUTES[kind]
    return needed or Databases.OPERATIONAL
