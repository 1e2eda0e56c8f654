"""The health service watcher's decisions: which agents missed their heartbeats, what to raise, what resolves.

Pure and clock-free: callers pass `now` (seconds, any monotonic origin) and act on the returned events (write
alerts, probe the computer, patch the Agent's status). One heap entry per watched agent, keyed by the moment it
would be overdue; a heartbeat only updates a field, and an entry that pops early is pushed back lazily, so the cost
is O(log n) per agent per window, never a scan of every agent per tick.

Operations Manager's defaults: heartbeat every 60 s; 4 missed raise "Health Service Heartbeat Failure"; then the
computer is probed and "Failed to Connect to Computer" is raised when the probe fails; both auto-resolve when
heartbeats return. A Goodbye, a planned pod removal and a maintenance window raise nothing.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import StrEnum

HEARTBEAT_FAILURE = "Health Service Heartbeat Failure"
FAILED_TO_CONNECT = "Failed to Connect to Computer"
DEFAULT_INTERVAL_SECONDS = 60.0
DEFAULT_MISSED_THRESHOLD = 4


class HeartbeatStatus(StrEnum):
    """The Agent's `status.heartbeat`, as the console shows it."""

    OK = "OK"
    FAILURE = "Failure"  # threshold missed; the computer is being probed or answered the probe
    UNREACHABLE = "Unreachable"  # threshold missed and the probe failed


@dataclass(frozen=True)
class AlertRaised:
    agent: str
    name: str
    at: float
    description: str


@dataclass(frozen=True)
class AlertResolved:
    agent: str
    name: str
    at: float


@dataclass(frozen=True)
class ProbeRequested:
    """Ask whoever can (the Pod's phase through the API, or a TCP connect for hosts) whether the computer is up."""

    agent: str
    at: float


@dataclass(frozen=True)
class StatusChanged:
    agent: str
    status: HeartbeatStatus
    at: float


WatchEvent = AlertRaised | AlertResolved | ProbeRequested | StatusChanged


@dataclass(slots=True)  # one per watched agent: no __dict__ each
class AgentWatch:
    agent: str
    interval: float
    threshold: int
    last_heartbeat: float
    status: HeartbeatStatus = HeartbeatStatus.OK
    in_maintenance: bool = False
    planned_absence: bool = False  # a Goodbye or a planned pod removal: silent until the agent speaks again
    probe_outstanding: bool = False
    open_alerts: set[str] = field(default_factory=set)

    @property
    def overdue_at(self) -> float:
        return self.last_heartbeat + self.interval * self.threshold

    @property
    def silenced(self) -> bool:
        return self.in_maintenance or self.planned_absence


@dataclass
class HeartbeatWatcher:
    """Watches a set of agents; every method returns the events the caller must carry out."""

    default_interval: float = DEFAULT_INTERVAL_SECONDS
    default_threshold: int = DEFAULT_MISSED_THRESHOLD
    _watches: dict[str, AgentWatch] = field(default_factory=dict)
    _deadlines: list[tuple[float, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, agent: str) -> bool:
        return agent in self._watches

    def status(self, agent: str) -> HeartbeatStatus | None:
        watch = self._watches.get(agent)
        return watch.status if watch else None

    def last_heartbeat(self, agent: str) -> float | None:
        watch = self._watches.get(agent)
        return watch.last_heartbeat if watch else None

    def agents(self) -> list[str]:
        return list(self._watches)

    def open_alerts(self, agent: str) -> frozenset[str]:
        watch = self._watches.get(agent)
        return frozenset(watch.open_alerts) if watch else frozenset()

    def watch(self, agent: str, now: float, *, last_heartbeat: float | None = None, interval: float | None = None,
              threshold: int | None = None, open_alerts: frozenset[str] = frozenset()) -> list[WatchEvent]:
        """Start (or re-tune) watching an agent.

        A server taking an agent over from another passes the last heartbeat it knows (from the database) and the
        alerts already open, so a hand-over neither raises twice nor forgets to resolve.
        """
        existing = self._watches.get(agent)
        watch = existing or AgentWatch(agent, self.default_interval, self.default_threshold,
                                       now if last_heartbeat is None else last_heartbeat)
        if existing is not None and (interval is None or interval == watch.interval) and (
                threshold is None or threshold == watch.threshold):
            return []  # nothing changed: no second heap entry, so re-tuning every agent stays cheap
        if interval is not None:
            watch.interval = interval
        if threshold is not None:
            watch.threshold = threshold
        if existing is None:
            watch.open_alerts = set(open_alerts)
            if FAILED_TO_CONNECT in open_alerts:
                watch.status = HeartbeatStatus.UNREACHABLE
            elif HEARTBEAT_FAILURE in open_alerts:
                watch.status = HeartbeatStatus.FAILURE
            self._watches[agent] = watch
        heapq.heappush(self._deadlines, (watch.overdue_at, agent))
        return []

    def forget(self, agent: str) -> None:
        """Stop watching (the Agent was deleted, or another server now watches it); its heap entry dies lazily."""
        self._watches.pop(agent, None)

    def heartbeat(self, agent: str, now: float) -> list[WatchEvent]:
        """An agent spoke: it is alive. Resolves what its silence raised."""
        watch = self._watches.get(agent)
        if watch is None:
            return self.watch(agent, now)
        watch.last_heartbeat = max(watch.last_heartbeat, now)
        watch.planned_absence = False
        # No push here: the entry already in the heap pops at the old deadline and is pushed back then.
        return self._all_clear(watch, now)

    def goodbye(self, agent: str, now: float) -> list[WatchEvent]:
        """A planned shutdown (Goodbye) or a planned pod removal: the coming silence raises nothing."""
        watch = self._watches.get(agent)
        if watch is None:
            return []
        watch.planned_absence = True
        return []

    def planned_removal(self, agent: str, now: float) -> list[WatchEvent]:
        """The computer is going away on purpose (its Pod is being deleted): take back what its silence raised."""
        watch = self._watches.get(agent)
        if watch is None:
            return []
        watch.planned_absence = True
        return self._all_clear(watch, now)

    @staticmethod
    def _all_clear(watch: AgentWatch, now: float) -> list[WatchEvent]:
        """Resolve what the agent's silence raised and report it OK again."""
        watch.probe_outstanding = False
        events: list[WatchEvent] = [AlertResolved(watch.agent, name, now) for name in sorted(watch.open_alerts)]
        watch.open_alerts.clear()
        if watch.status is not HeartbeatStatus.OK:
            watch.status = HeartbeatStatus.OK
            events.append(StatusChanged(watch.agent, HeartbeatStatus.OK, now))
        return events

    def set_maintenance(self, agent: str, in_maintenance: bool, now: float) -> list[WatchEvent]:
        """Maintenance silences the watcher; when it ends the agent gets a full window before it is judged."""
        watch = self._watches.get(agent)
        if watch is None or watch.in_maintenance == in_maintenance:
            return []
        watch.in_maintenance = in_maintenance
        if not in_maintenance:
            watch.last_heartbeat = max(watch.last_heartbeat, now)
            heapq.heappush(self._deadlines, (watch.overdue_at, agent))
        return []

    def due(self, now: float) -> list[WatchEvent]:
        """Everything that became overdue by `now`: raise Heartbeat Failure and ask for a probe."""
        events: list[WatchEvent] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, agent = heapq.heappop(self._deadlines)
            watch = self._watches.get(agent)
            if watch is None:
                continue  # forgotten since it was scheduled
            if watch.overdue_at > now:
                heapq.heappush(self._deadlines, (watch.overdue_at, agent))  # heartbeats came in meanwhile
                continue
            if watch.silenced or watch.status is not HeartbeatStatus.OK:
                # Still failing: probe again each interval, so a computer that goes down later is reported too.
                if watch.status is HeartbeatStatus.FAILURE and not watch.silenced and not watch.probe_outstanding:
                    watch.probe_outstanding = True
                    events.append(ProbeRequested(agent, now))
                heapq.heappush(self._deadlines, (now + watch.interval, agent))
                continue
            missed = int((now - watch.last_heartbeat) // watch.interval)
            watch.status = HeartbeatStatus.FAILURE
            watch.open_alerts.add(HEARTBEAT_FAILURE)
            watch.probe_outstanding = True
            events += [
                AlertRaised(agent, HEARTBEAT_FAILURE, now,
                            f"{agent} missed {missed} heartbeats (interval {watch.interval:g} s, threshold "
                            f"{watch.threshold}); probing the computer"),
                StatusChanged(agent, HeartbeatStatus.FAILURE, now),
                ProbeRequested(agent, now),
            ]
            heapq.heappush(self._deadlines, (now + watch.interval, agent))
        return events

    def probe_result(self, agent: str, reachable: bool, now: float, detail: str = "") -> list[WatchEvent]:
        """The computer answered the probe (or did not). A stale answer, after the agent spoke again, is ignored."""
        watch = self._watches.get(agent)
        if watch is None or not watch.probe_outstanding or watch.status is HeartbeatStatus.OK:
            return []
        watch.probe_outstanding = False
        if reachable or watch.silenced:
            return []
        watch.status = HeartbeatStatus.UNREACHABLE
        watch.open_alerts.add(FAILED_TO_CONNECT)
        reason = f": {detail}" if detail else ""
        return [AlertRaised(agent, FAILED_TO_CONNECT, now, f"the computer of {agent} did not answer the probe{reason}"),
                StatusChanged(agent, HeartbeatStatus.UNREACHABLE, now)]

    def next_deadline(self) -> float | None:
        """When `due` next has something to do, so the caller can sleep until then instead of ticking."""
        return self._deadlines[0][0] if self._deadlines else None
