"""Small factories of agent data for the db tests: item n of each kind is distinguishable by its text."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from opsmgr.db.model import (
    Alert,
    AlertSeverity,
    Batch,
    DiscoveryItem,
    Event,
    EventLevel,
    HealthState,
    Item,
    Lane,
    PerformanceSample,
    ResolutionState,
    StateChange,
)

AGENT = "web01.contoso.test"
NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def event(n: int, at: datetime = NOON) -> Event:
    return Event(at, "Linux.Computer:web01", "syslog", "sshd", 4625, EventLevel.WARNING, f"event {n}")


def sample(n: int, at: datetime = NOON) -> PerformanceSample:
    return PerformanceSample(at, "Linux.Computer:web01", "Processor", "% Processor Time", f"cpu{n}", float(n))


def state_change(n: int, at: datetime = NOON) -> StateChange:
    return StateChange(at, f"Linux.FileSystem:/data{n}", "FreeSpace", HealthState.HEALTHY, HealthState.WARNING)


def alert(n: int, at: datetime = NOON, state: ResolutionState = ResolutionState.NEW) -> Alert:
    return Alert(at, f"Linux.FileSystem:/data{n}", "FreeSpaceMonitor", "Low disk space", f"alert {n}",
                 AlertSeverity.WARNING, resolution_state=state)


def discovery(n: int, at: datetime = NOON) -> DiscoveryItem:
    return DiscoveryItem(at, f"Linux.FileSystem:/data{n}", "Linux.FileSystem", f"/data{n}", {"size": str(n)})


def batch(seq: int, lane: Lane, items: Sequence[Item], *, epoch: uuid.UUID | None = None,
          agent: str = AGENT) -> Batch:
    return Batch(agent, epoch or uuid.UUID(int=1), seq, lane, tuple(items))
