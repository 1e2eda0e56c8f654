"""What the server knows about each agent's liveness: streams, heartbeats and goodbyes, in memory.

This is where the health service watcher plugs in: it subscribes a `PresenceListener` (or reads the ledger) and
decides on "Health Service Heartbeat Failure"; the status patcher reads the same facts for Agent.status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueReport:
    depth_items: int
    size_bytes: int
    limit_bytes: int
    evicted_items_total: int


@dataclass(frozen=True, slots=True)  # one per agent, replaced at each heartbeat: no __dict__ each
class AgentPresence:
    agent: str
    connected: bool
    session_id: str | None
    via_gateway: str | None
    connected_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    heartbeat_seq: int | None = None
    queue: QueueReport | None = None
    goodbye_at: datetime | None = None  # a planned shutdown: the watcher raises nothing
    goodbye_reason: str | None = None
    disconnected_at: datetime | None = None


class PresenceListener(Protocol):
    """Callbacks run on the event loop right after the ledger changed; they must not block."""

    def presence_changed(self, before: AgentPresence | None, after: AgentPresence) -> None: ...


@dataclass
class PresenceLedger:
    agents: dict[str, AgentPresence] = field(default_factory=dict)
    listeners: list[PresenceListener] = field(default_factory=list)

    def get(self, agent: str) -> AgentPresence | None:
        return self.agents.get(agent)

    def connected(self, agent: str, session_id: str, via_gateway: str | None, at: datetime,
                  queue: QueueReport | None) -> None:
        self._set(agent, AgentPresence(agent, True, session_id, via_gateway, connected_at=at, queue=queue,
                                       last_heartbeat_at=self._last_heartbeat(agent)))

    def heartbeat(self, agent: str, session_id: str, at: datetime, seq: int, queue: QueueReport | None) -> None:
        current = self.agents.get(agent)
        if current is None or current.session_id != session_id:
            return
        self._set(agent, replace(current, last_heartbeat_at=at, heartbeat_seq=seq, queue=queue or current.queue))

    def goodbye(self, agent: str, session_id: str, at: datetime, reason: str) -> None:
        current = self.agents.get(agent)
        if current is not None and current.session_id == session_id:
            self._set(agent, replace(current, goodbye_at=at, goodbye_reason=reason))

    def disconnected(self, agent: str, session_id: str, at: datetime) -> None:
        current = self.agents.get(agent)
        # A newer stream of the same agent may already have taken over; its presence stands.
        if current is not None and current.session_id == session_id:
            self._set(agent, replace(current, connected=False, disconnected_at=at))

    def _last_heartbeat(self, agent: str) -> datetime | None:
        current = self.agents.get(agent)
        return current.last_heartbeat_at if current else None

    def _set(self, agent: str, after: AgentPresence) -> None:
        before = self.agents.get(agent)
        self.agents[agent] = after
        for listener in self.listeners:
            try:
                listener.presence_changed(before, after)
            except Exception:
                log.exception("presence listener failed", extra={"fields": {"agent": agent}})
