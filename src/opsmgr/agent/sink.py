"""What collection hands to the data path: protobuf Items, built here with the channel's limits applied.

Collectors never talk to the queue or the connection; they call an `ItemSink`, which the data path provides
(its durable queue's enqueue). Every builder keeps strings inside `opsmgr.protocol.limits`, because the server
refuses longer text instead of cutting it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import IntEnum
from typing import Protocol

from opsmgr.api.management_group import AlertSeverity
from opsmgr.api.management_pack import AlertPriority, EventLevel
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol import limits

TRUNCATION_MARK = " [truncated by the agent]"


class ItemSink(Protocol):
    """Takes items for durable sending; returns once they are the data path's responsibility (on disk)."""

    async def __call__(self, items: Sequence[pb.Item]) -> None: ...


class HealthState(IntEnum):
    """A monitor's state as the channel numbers it (StateChange.old_state/new_state)."""

    UNKNOWN = 0
    HEALTHY = 1
    WARNING = 2
    CRITICAL = 3


class ResolutionState(IntEnum):
    NEW = 0
    RESOLVED = 254


# Windows event levels, as the channel numbers them.
EVENT_LEVELS: Mapping[EventLevel, int] = {EventLevel.ERROR: 2, EventLevel.WARNING: 3, EventLevel.INFORMATION: 4}
ALERT_SEVERITIES: Mapping[AlertSeverity, int] = {
    AlertSeverity.INFORMATION: 0, AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}
ALERT_PRIORITIES: Mapping[AlertPriority, int] = {AlertPriority.LOW: 0, AlertPriority.MEDIUM: 1, AlertPriority.HIGH: 2}


def bounded(text: str, limit: int = limits.MAX_STRING_CHARS) -> str:
    """`text` cut to `limit` characters, marked where it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def computer_key(fqdn: str) -> str:
    """Object key of the agent's computer, the object that rules and monitors without a narrower target are about."""
    return f"Linux.Computer:{fqdn}"


def performance(at: datetime, *, object_key: str, object_name: str, counter: str, instance: str,
                value: float) -> pb.Item:
    return pb.Item(performance=pb.PerformanceSample(
        sampled_at=at, object_key=bounded(object_key, limits.MAX_KEY_CHARS),
        object_name=bounded(object_name, limits.MAX_KEY_CHARS), counter_name=bounded(counter, limits.MAX_KEY_CHARS),
        instance_name=bounded(instance, limits.MAX_KEY_CHARS), value=value))


def event(at: datetime, *, object_key: str, channel: str, source: str, number: int, level: EventLevel,
          description: str) -> pb.Item:
    return pb.Item(event=pb.Event(
        logged_at=at, object_key=bounded(object_key, limits.MAX_KEY_CHARS), channel=bounded(channel),
        source=bounded(source, limits.MAX_KEY_CHARS), number=number, level=EVENT_LEVELS[level],
        description=bounded(description)))


def state_change(at: datetime, *, object_key: str, monitor: str, old: HealthState, new: HealthState) -> pb.Item:
    return pb.Item(state=pb.StateChange(
        changed_at=at, object_key=bounded(object_key, limits.MAX_KEY_CHARS),
        monitor=bounded(monitor, limits.MAX_KEY_CHARS), old_state=int(old), new_state=int(new)))


def alert(at: datetime, *, object_key: str, source: str, name: str, description: str, severity: AlertSeverity,
          priority: AlertPriority, resolution: ResolutionState = ResolutionState.NEW) -> pb.Item:
    return pb.Item(alert=pb.Alert(
        raised_at=at, object_key=bounded(object_key, limits.MAX_KEY_CHARS),
        source=bounded(source, limits.MAX_KEY_CHARS), name=bounded(name), description=bounded(description),
        severity=ALERT_SEVERITIES[severity], priority=ALERT_PRIORITIES[priority], resolution_state=int(resolution)))


def discovery(at: datetime, *, object_key: str, class_name: str, display_name: str,
              properties: Mapping[str, str]) -> pb.Item:
    kept = dict(sorted(properties.items())[: limits.MAX_DISCOVERY_PROPERTIES])
    return pb.Item(discovery=pb.DiscoveryItem(
        discovered_at=at, object_key=bounded(object_key, limits.MAX_KEY_CHARS),
        class_name=bounded(class_name, limits.MAX_KEY_CHARS), display_name=bounded(display_name),
        properties={bounded(k, limits.MAX_KEY_CHARS): bounded(v) for k, v in kept.items()}))


class CoalescingSink:
    """Hands the items of calls made within `window_seconds` of each other downstream in one call.

    Rules of one interval tick in the same instant; fifty small enqueues become one queue transaction (one fsync).
    Each caller still returns only once its items are downstream, and sees the downstream error if there was one.
    """

    def __init__(self, downstream: ItemSink, window_seconds: float = 0.05) -> None:
        self.downstream = downstream
        self.window_seconds = window_seconds
        self._pending: list[pb.Item] = []
        self._done: asyncio.Future[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def __call__(self, items: Sequence[pb.Item]) -> None:
        if not items:
            return
        self._pending.extend(items)
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            flush = loop.create_task(self._flush_later(self._done))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        # Shielded: a caller that is cancelled must not cancel the delivery of the others' items.
        await asyncio.shield(self._done)

    async def _flush_later(self, done: asyncio.Future[None]) -> None:
        await asyncio.sleep(self.window_seconds)
        batch, self._pending, self._done = self._pending, [], None
        try:
            for start in range(0, len(batch), limits.MAX_BATCH_ITEMS):
                await self.downstream(batch[start:start + limits.MAX_BATCH_ITEMS])
        except Exception as error:  # handed to every caller of this window
            done.set_exception(error)
        else:
            done.set_result(None)


class ListSink:
    """An ItemSink that keeps what it was given; for tests, benchmarks and dry runs."""

    def __init__(self) -> None:
        self.items: list[pb.Item] = []

    async def __call__(self, items: Sequence[pb.Item]) -> None:
        self.items.extend(items)

    def of_kind(self, kind: str) -> list[pb.Item]:
        return [item for item in self.items if item.WhichOneof("kind") == kind]

    def extend(self, items: Iterable[pb.Item]) -> None:
        self.items.extend(items)
