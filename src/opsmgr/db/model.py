"""Plain data the writers take: the item kinds an agent sends, the batch that carries them, and retention.

Everything here is validated when constructed, so a writer never has to guess what a malformed item meant; each
error names the field, the value and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple
from uuid import UUID


class InvalidBatch(ValueError):
    """A batch or item that no database may accept, with a message naming the field, the value and the fix."""


class Database(StrEnum):
    OPERATIONAL = "operational"
    WAREHOUSE = "warehouse"


class Lane(StrEnum):
    PRIORITY = "priority"
    BULK = "bulk"


class ItemKind(StrEnum):
    EVENT = "event"
    PERFORMANCE = "performance"
    STATE = "state"
    ALERT = "alert"
    DISCOVERY = "discovery"


class DropReason(StrEnum):
    """Why an item was counted and dropped instead of written."""

    BEYOND_RETENTION = "beyond_retention"
    AHEAD_OF_CLOCK = "ahead_of_clock"


class ResolutionState(IntEnum):
    """Operations Manager's alert resolution states; 1..248 are left free for custom states, as there."""

    NEW = 0
    ACKNOWLEDGED = 249
    RESOLVED = 254
    CLOSED = 255


# An alert at or above this state is no longer active: a new occurrence of its key opens a fresh alert.
FIRST_INACTIVE_RESOLUTION_STATE = ResolutionState.RESOLVED


class HealthState(IntEnum):
    UNKNOWN = 0
    HEALTHY = 1
    WARNING = 2
    CRITICAL = 3


class EventLevel(IntEnum):
    """Windows event levels; the agent maps syslog priorities onto them."""

    CRITICAL = 1
    ERROR = 2
    WARNING = 3
    INFORMATION = 4
    VERBOSE = 5


class AlertSeverity(IntEnum):
    INFORMATION = 0
    WARNING = 1
    CRITICAL = 2


class AlertPriority(IntEnum):
    LOW = 0
    MEDIUM = 1
    HIGH = 2


# The items are named tuples, not frozen dataclasses: the server builds one per item it ingests, and a frozen
# dataclass costs five times as much to construct (its __init__ sets each field through object.__setattr__).
# Every item's first field is its time and its second its object key; the time-series rows repeat the fields in
# order (opsmgr.db.routing).
class Event(NamedTuple):
    logged_at: datetime
    object_key: str  # the monitoring object the event is about, e.g. "Linux.Computer:web01.contoso.test"
    channel: str  # event log or syslog facility
    source: str  # publisher
    number: int  # the event id a rule matches on; not unique
    level: EventLevel
    description: str

    @property
    def kind(self) -> ItemKind:
        return ItemKind.EVENT

    @property
    def timestamp(self) -> datetime:
        return self.logged_at


class PerformanceSample(NamedTuple):
    sampled_at: datetime
    object_key: str
    object_name: str  # e.g. "Processor"
    counter_name: str  # e.g. "% Processor Time"
    instance_name: str  # e.g. "_Total"; empty when the counter has no instances
    value: float

    @property
    def kind(self) -> ItemKind:
        return ItemKind.PERFORMANCE

    @property
    def timestamp(self) -> datetime:
        return self.sampled_at


class StateChange(NamedTuple):
    changed_at: datetime
    object_key: str
    monitor: str
    old_state: HealthState
    new_state: HealthState

    @property
    def kind(self) -> ItemKind:
        return ItemKind.STATE

    @property
    def timestamp(self) -> datetime:
        return self.changed_at


class Alert(NamedTuple):
    """One occurrence of an alert (resolution state New) or its resolution by the monitor that raised it.

    The alert key is (agent, object_key, source): while an alert with that key is active, another occurrence
    increments its repeat count instead of opening a new alert.
    """

    raised_at: datetime
    object_key: str
    source: str  # the rule or monitor that raised it
    name: str
    description: str
    severity: AlertSeverity
    priority: AlertPriority = AlertPriority.MEDIUM
    resolution_state: ResolutionState = ResolutionState.NEW

    @property
    def kind(self) -> ItemKind:
        return ItemKind.ALERT

    @property
    def timestamp(self) -> datetime:
        return self.raised_at


class DiscoveryItem(NamedTuple):
    """One discovered object of the agent's inventory, upserted by (agent, object_key)."""

    discovered_at: datetime
    object_key: str
    class_name: str  # e.g. "Linux.Computer", "Linux.FileSystem"
    display_name: str
    properties: Mapping[str, str] = MappingProxyType({})

    @property
    def kind(self) -> ItemKind:
        return ItemKind.DISCOVERY

    @property
    def timestamp(self) -> datetime:
        return self.discovered_at


Item = Event | PerformanceSample | StateChange | Alert | DiscoveryItem

LANE_KINDS: Mapping[Lane, frozenset[ItemKind]] = {
    Lane.PRIORITY: frozenset({ItemKind.ALERT, ItemKind.STATE, ItemKind.DISCOVERY}),
    Lane.BULK: frozenset({ItemKind.EVENT, ItemKind.PERFORMANCE}),
}

# Acknowledged and custom states are set by people in the console, never by the agent that raised the alert.
AGENT_RESOLUTION_STATES = frozenset({ResolutionState.NEW, ResolutionState.RESOLVED, ResolutionState.CLOSED})


@dataclass(frozen=True, slots=True)
class BatchId:
    agent: str
    epoch: UUID
    seq: int


@dataclass(frozen=True, slots=True)
class Batch:
    """An immutable batch from an agent's durable queue, identified by (agent, epoch, seq).

    The epoch is minted when the agent's queue is created, so sequence numbers restart safely after a reinstall.
    Sequence numbers are per (agent, epoch) across both lanes.
    """

    agent: str
    epoch: UUID
    seq: int
    lane: Lane
    items: tuple[Item, ...]
    # The rows its items become, worked out once by opsmgr.db.routing and shared by both databases' writers.
    _series: Any = field(default=None, init=False, repr=False, compare=False)
    # Set for a batch formed without its items (`Batch.deferred`): what is known of them, and how to make them.
    _deferred: DeferredItems | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_header(self.agent, self.epoch, self.seq, self.lane)
        allowed = LANE_KINDS[self.lane]
        types = _LANE_TYPES[self.lane]
        for index, item in enumerate(self.items):
            # The common case in one expression (an item's time and object key are its first two fields);
            # _check_item says what is wrong, and checks what only alerts have.
            if type(item) not in types or item[0].tzinfo is None or not item[1]:
                _check_item(index, item, self.lane, allowed)

    @classmethod
    def deferred(cls, agent: str, epoch: UUID, seq: int, lane: Lane, known: DeferredItems) -> Batch:
        """A batch whose items are made only if something asks for them.

        The server forms a bulk batch's rows straight from the wire, checked as the items would be
        (opsmgr.server.convert), and the writers COPY those rows: making hundreds of items, each with its datetime,
        cost a quarter of the server's time per item and nobody looked at them. Whoever does look (a replay that
        falls outside the acceptance window, a test) gets the very items `known.make` builds, once.
        """
        _check_header(agent, epoch, seq, lane)
        if not known.kinds <= LANE_KINDS[lane]:
            raise ValueError(f"a deferred {lane} batch cannot hold {sorted(known.kinds - LANE_KINDS[lane])}")
        batch = object.__new__(cls)
        for name, value in (("agent", agent), ("epoch", epoch), ("seq", seq), ("lane", lane), ("_series", None),
                            ("_deferred", known)):
            object.__setattr__(batch, name, value)
        return batch

    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup fails: for `items`, when a deferred batch has not made them yet.
        if name == "items" and self._deferred is not None:
            items = self._deferred.make()
            object.__setattr__(self, "items", items)
            return items
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def id(self) -> BatchId:
        return BatchId(self.agent, self.epoch, self.seq)

    @property
    def size(self) -> int:
        """How many items the batch holds (without making a deferred batch's items)."""
        return self._deferred.size if self._deferred is not None else len(self.items)

    def kinds(self) -> frozenset[ItemKind]:
        if self._deferred is not None:
            return self._deferred.kinds
        # From the few distinct types, not per item: the server asks this of every batch it ingests.
        types = set(map(type, self.items))
        if types <= _ITEM_KINDS.keys():
            return frozenset(map(_ITEM_KINDS.__getitem__, types))
        return frozenset(item.kind for item in self.items)  # a subclass of an item type


_ITEM_KINDS: Mapping[type, ItemKind] = {Event: ItemKind.EVENT, PerformanceSample: ItemKind.PERFORMANCE,
                                        StateChange: ItemKind.STATE, Alert: ItemKind.ALERT,
                                        DiscoveryItem: ItemKind.DISCOVERY}


# The exact types, for Batch's quick check; alerts are left out so that _check_item sees each of them.
_LANE_TYPES: Mapping[Lane, frozenset[type]] = {
    lane: frozenset(t for t, kind in _ITEM_KINDS.items() if kind in kinds and t is not Alert)
    for lane, kinds in LANE_KINDS.items()}


@dataclass(frozen=True, slots=True)
class DeferredItems:
    """What a deferred batch knows of its items without making them, and the function that makes them."""

    kinds: frozenset[ItemKind]
    size: int
    make: Callable[[], tuple[Item, ...]]


def _check_header(agent: str, epoch: UUID, seq: int, lane: Lane) -> None:
    if not agent:
        raise InvalidBatch("batch.agent is empty: set it to the agent's FQDN (its certificate CN)")
    if not isinstance(epoch, UUID):
        raise InvalidBatch(f"batch.epoch is {epoch!r}: it must be the UUID minted with the agent's queue")
    if seq < 0:
        raise InvalidBatch(f"batch.seq is {seq}: sequence numbers start at 0 and only grow")
    if not isinstance(lane, Lane):
        raise InvalidBatch(f"batch.lane is {lane!r}: use 'priority' or 'bulk'")


def _check_item(index: int, item: Item, lane: Lane, allowed: frozenset[ItemKind]) -> None:
    # Runs for every item the server ingests: the common case is a dict lookup and a few attribute reads.
    kind = _ITEM_KINDS.get(type(item))
    if kind is None:
        if not isinstance(item, Event | PerformanceSample | StateChange | Alert | DiscoveryItem):
            raise InvalidBatch(f"batch.items[{index}] is a {type(item).__name__}: send Event, PerformanceSample, "
                               "StateChange, Alert or DiscoveryItem")
        kind = item.kind
    if kind not in allowed:
        right = next(other for other, kinds in LANE_KINDS.items() if kind in kinds)
        raise InvalidBatch(f"batch.items[{index}] is {kind} data in the {lane} lane: send {kind} items in the "
                           f"{right} lane")
    if item.timestamp.tzinfo is None:
        raise InvalidBatch(f"batch.items[{index}].timestamp {item.timestamp.isoformat()} has no time zone: send "
                           "aware UTC times")
    if not item.object_key:
        raise InvalidBatch(f"batch.items[{index}].object_key is empty: name the monitoring object the {kind} is "
                           "about")
    if isinstance(item, Alert) and item.resolution_state not in AGENT_RESOLUTION_STATES:
        raise InvalidBatch(f"batch.items[{index}].resolution_state is {int(item.resolution_state)}: an agent "
                           "raises alerts as New (0) and resolves them as Resolved (254) or Closed (255); other "
                           "states are set in the console")


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each database keeps what (days); defaults are Operations Manager's (DESIGN.md sections 3 and 5)."""

    operational_days: int = 7
    warehouse_raw_days: int = 10
    warehouse_aggregated_days: int = 400
    alert_days: int = 400
    # Daily partitions are created this many days past today, so midnight never waits for DDL.
    partitions_ahead_days: int = 2

    def __post_init__(self) -> None:
        for name in ("operational_days", "warehouse_raw_days", "warehouse_aggregated_days", "alert_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"retention.{name} is {value!r}: give a whole number of days, at least 1")
        if not isinstance(self.partitions_ahead_days, int) or not 0 <= self.partitions_ahead_days <= 31:
            raise ValueError(f"retention.partitions_ahead_days is {self.partitions_ahead_days!r}: give 0 to 31 days")

    def raw_days(self, database: Database) -> int:
        """Retention of events, performance and state rows in `database`."""
        return self.operational_days if database is Database.OPERATIONAL else self.warehouse_raw_days
