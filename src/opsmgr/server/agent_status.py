"""The Agent status fields the management servers own, decided from what the watcher knows (pure), and the
throttled writer that patches them.

Owned fields: heartbeat, connection, server, maintenance, health, lastHeartbeatTime, queue and the `Heartbeat`
and `Connected` conditions (the operator owns approval, assignment, certificate, Ready and its own conditions). A field
is written only when its value changed; lastHeartbeatTime (and the queue, which moves with every heartbeat) only
when the connection changed or the stored time is `heartbeat_every` old, so a heartbeat never costs a write. The
patch carries the resourceVersion it was decided from: a concurrent change answers 409, and the agent is decided
again from the newer object the watch delivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opsmgr.api.agent import Connection, Health
from opsmgr.api.conditions import Condition, ConditionStatus, set_condition
from opsmgr.kubeio.kube import Kube, KubeError, Ref
from opsmgr.server.heartbeat_watcher import HeartbeatStatus
from opsmgr.server.presence import QueueReport

log = logging.getLogger(__name__)

HEARTBEAT_CONDITION = "Heartbeat"
CONNECTED_CONDITION = "Connected"


@dataclass(frozen=True)
class ObservedAgent:
    """What the server watching an agent knows about it now."""

    heartbeat: HeartbeatStatus
    connection: Connection
    server: str | None
    last_heartbeat: datetime | None
    queue: QueueReport | None
    maintenance: bool
    health: Health | None = None  # None: not decided yet (the monitors' states are being read), leave it as stored


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _queue(report: QueueReport) -> dict[str, int]:
    percent = min(100, 100 * report.size_bytes // report.limit_bytes) if report.limit_bytes else 0
    return {"usedBytes": report.size_bytes, "limitBytes": report.limit_bytes, "percentUsed": percent,
            "items": report.depth_items, "evictions": report.evicted_items_total}


def _heartbeat_verdict(observed: ObservedAgent) -> tuple[ConditionStatus, str, str]:
    if observed.maintenance:
        return ConditionStatus.UNKNOWN, "InMaintenance", "The agent is in maintenance: its heartbeats are not judged."
    if observed.heartbeat is HeartbeatStatus.UNREACHABLE:
        return (ConditionStatus.FALSE, "ComputerUnreachable",
                "Heartbeats stopped and the computer did not answer the probe (Failed to Connect to Computer).")
    if observed.heartbeat is HeartbeatStatus.FAILURE:
        return (ConditionStatus.FALSE, "HeartbeatFailure",
                "Heartbeats stopped (Health Service Heartbeat Failure); the computer answers its probe.")
    return ConditionStatus.TRUE, "HeartbeatOK", "Heartbeats arrive on time."


def _connected_verdict(observed: ObservedAgent) -> tuple[ConditionStatus, str, str]:
    if observed.connection is Connection.CONNECTED:
        return ConditionStatus.TRUE, "StreamOpen", f"Connected to management server {observed.server}."
    if observed.connection is Connection.DISCONNECTED:
        return ConditionStatus.FALSE, "StreamClosed", f"The stream to {observed.server} closed."
    return ConditionStatus.FALSE, "NeverConnected", "The agent has not connected to any management server yet."


def status_patch(stored: Mapping[str, Any], observed: ObservedAgent, now: datetime, *, heartbeat_every: timedelta,
                 generation: int | None = None) -> dict[str, Any]:
    """The status fields to write so the stored status says what `observed` says; empty when nothing is due."""
    patch: dict[str, Any] = {}
    wanted = {"heartbeat": observed.heartbeat.value, "connection": observed.connection.value,
              "maintenance": observed.maintenance}
    if observed.server is not None:
        wanted["server"] = observed.server
    if observed.health is not None:
        wanted["health"] = observed.health.value
    patch |= {key: value for key, value in wanted.items() if stored.get(key) != value}
    stored_time = _parse(stored.get("lastHeartbeatTime"))
    if observed.last_heartbeat is not None and (
            "connection" in patch or stored_time is None
            or abs(observed.last_heartbeat - stored_time) >= heartbeat_every):
        patch["lastHeartbeatTime"] = _stamp(observed.last_heartbeat)
        if observed.queue is not None:
            patch["queue"] = _queue(observed.queue)
    conditions = [Condition.model_validate(c) for c in stored.get("conditions") or []]
    updated = conditions
    for type, (status, reason, message) in ((HEARTBEAT_CONDITION, _heartbeat_verdict(observed)),
                                            (CONNECTED_CONDITION, _connected_verdict(observed))):
        updated = set_condition(updated, Condition.of(type, status, reason, message, generation=generation,
                                                      now=now))
    before = {c.type: c for c in conditions}
    if any(c.type not in before or not c.same_decision(before[c.type]) for c in updated):
        patch["conditions"] = [c.to_dict() for c in updated]
    return patch


class AgentStatusWriter:
    """Patches the status of the agents this server watches, one agent at a time per pass, at most `rate` a second.

    `body_of(name)` returns the Agent as the watch last delivered it (with its resourceVersion), or None.
    """

    def __init__(self, kube: Kube, namespace: str, body_of: Callable[[str], Mapping[str, Any] | None], *,
                 heartbeat_every: timedelta, rate: float = 50.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.body_of = body_of
        self.heartbeat_every = heartbeat_every
        self.rate = rate
        self.patches = 0
        self._pending: dict[str, ObservedAgent] = {}
        self._wake = asyncio.Event()

    def observe(self, name: str, observed: ObservedAgent) -> None:
        """Remember what to write for the Agent `name`; written by the next pass, if it differs from the stored."""
        self._pending[name] = observed
        self._wake.set()

    def forget(self, name: str) -> None:
        self._pending.pop(name, None)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for name in list(self._pending):
                observed = self._pending.pop(name, None)
                if observed is None:
                    continue
                if await self._write(name, observed):
                    await asyncio.sleep(1.0 / self.rate)

    async def _write(self, name: str, observed: ObservedAgent) -> bool:
        body = self.body_of(name)
        if body is None:
            return False
        metadata = body.get("metadata") or {}
        patch = status_patch(body.get("status") or {}, observed, datetime.now().astimezone(),
                             heartbeat_every=self.heartbeat_every, generation=metadata.get("generation"))
        if not patch:
            return False
        try:
            await self.kube.merge_patch(Ref("opsmgr.io/v1alpha1", "Agent", self.namespace, name),
                                        {"metadata": {"resourceVersion": metadata.get("resourceVersion")},
                                         "status": patch}, subresource="status")
        except KubeError as error:
            if error.status in (404, 409):
                # Gone, or changed meanwhile: the watch brings the newer object; decide again from it.
                self._pending.setdefault(name, observed)
                await asyncio.sleep(0.2)
                self._wake.set()
                return False
            log.warning("agent status patch failed", extra={"fields": {"agent": name, "error": str(error)}})
            return False
        except (OSError, TimeoutError) as exc:
            log.warning("agent status patch failed", extra={"fields": {"agent": name, "error": str(exc)}})
            self._pending.setdefault(name, observed)
            return False
        self.patches += 1
        return True
