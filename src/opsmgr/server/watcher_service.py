"""The health service watcher running in a management server, and how the fleet shares it.

Design (every agent watched by exactly one live server, and no false alarm when servers restart):

- Heartbeats arrive at the server an agent is connected to. That server always watches the agent itself
  (`fleet.watcher_of`: the live server its stream is on), so the common path never leaves memory: PresenceLedger
  -> HeartbeatWatcher.
- Every server records the streams it holds in the operational DB's `agent_presence` table (connected, last
  heartbeat, goodbye), batched every `presence_flush_seconds`, so a row costs one write per agent per flush at
  most, never one per heartbeat.
- An agent with no stream on a live server (disconnected, never connected, or its server died) is watched by the
  first live server of its rendezvous ranking over the Lease-holding servers. That server reads the presence rows
  that changed since its last read and feeds their heartbeats to its watcher, so an agent that moved to another
  server is seen alive until that server's next flush marks it connected there, and the watch moves with it.
- Taking an agent over starts its watch from the last heartbeat anyone recorded (presence row, else the Agent's
  status.lastHeartbeatTime, else its creation) and the watcher alerts already open in the DB, so a hand-over
  neither raises twice nor forgets to resolve. Alerts are opened with ON CONFLICT DO NOTHING on the one-active-
  alert-per-key index, so two servers deciding at once still make one alert.
- A rolling restart raises nothing: the stopping server ends its streams at once (UNAVAILABLE, "stopping"), flushes
  their closes as the agents' last heartbeats and deletes its Lease; its agents reconnect elsewhere within
  seconds, and whoever watches them meanwhile counts them alive from those closes.

Probes: a Host agent's configured TCP port; a Node or Sidecar agent's Pod phase through the API. A Pod being
deleted (deletionTimestamp) or gone is a planned removal: its Heartbeat Failure, held back until the probe
answered, is never written. Alerts go to the operational DB under the sources in `ALERT_SOURCES` and are resolved
(254) when heartbeats return. The Agent's heartbeat status and conditions follow through `AgentStatusWriter`.

Health: the watching server also writes the Agent's `status.health` (one writer per Agent), from the monitor states
in `AgentHealthBook` (read back from the operational DB when it takes the agent, then fed with the state changes its
own ingest commits) and `decided_health`'s rules (Unknown while not approved, in maintenance or heartbeat lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from opsmgr.api.agent import Agent, Approval, Connection, HeartbeatState
from opsmgr.db.health_model import decided_health
from opsmgr.db.model import LANE_KINDS, AlertPriority, AlertSeverity, Batch, ItemKind, StateChange
from opsmgr.db.monitor_states import latest_states
from opsmgr.db.presence import (
    PresenceRow,
    active_alerts,
    disown_presence,
    presence_changed_since,
    raise_agent_alert,
    record_presence,
    resolve_agent_alert,
)
from opsmgr.kubeio.kube import Kube, KubeError
from opsmgr.server.agent_health import AgentHealthBook
from opsmgr.server.agent_status import AgentStatusWriter, ObservedAgent
from opsmgr.server.fleet import watcher_of
from opsmgr.server.heartbeat_watcher import (
    FAILED_TO_CONNECT,
    HEARTBEAT_FAILURE,
    AlertRaised,
    AlertResolved,
    HeartbeatStatus,
    HeartbeatWatcher,
    ProbeRequested,
    StatusChanged,
    WatchEvent,
)
from opsmgr.server.kube_watch import AgentCatalog, fqdn_of, pod_of
from opsmgr.server.presence import AgentPresence, PresenceLedger

log = logging.getLogger(__name__)

ALERT_SOURCES = {HEARTBEAT_FAILURE: "opsmgr.watcher.heartbeat", FAILED_TO_CONNECT: "opsmgr.watcher.probe"}
ALERT_NAMES = {source: name for name, source in ALERT_SOURCES.items()}
OBJECT_KEYS = {HEARTBEAT_FAILURE: "HealthService", FAILED_TO_CONNECT: "Computer"}
# Rows committed by a slower transaction may carry an earlier updated_at than our watermark: re-read a margin.
READ_MARGIN = timedelta(seconds=2)


@dataclass(frozen=True)
class HostTarget:
    address: str
    port: int
    timeout: float


@dataclass(frozen=True)
class PodTarget:
    namespace: str
    name: str


@dataclass(frozen=True)
class ProbeVerdict:
    reachable: bool
    planned: bool = False  # the computer is going away on purpose: raise nothing
    detail: str = ""


@dataclass(frozen=True)
class WatchSettings:
    interval: float
    threshold: int
    in_maintenance: bool
    probe: HostTarget | PodTarget | None


def settings_for(agent: Agent | None, *, interval: float, threshold: int, probe_timeout: float,
                 now: datetime) -> WatchSettings:
    """The agent's interval and threshold (its overrides, else the group's), maintenance now, and probe target."""
    if agent is None:
        return WatchSettings(interval, threshold, False, None)
    override = agent.spec.heartbeat
    probe: HostTarget | PodTarget | None = None
    if agent.spec.probe is not None:
        probe = HostTarget(agent.spec.probe.address or agent.spec.fqdn, agent.spec.probe.port,
                           min(float(agent.spec.probe.timeout_seconds), probe_timeout))
    elif (pod := pod_of(agent)) is not None:
        probe = PodTarget(*pod)
    return WatchSettings(float(override.interval_seconds) if override and override.interval_seconds else interval,
                         override.missed_threshold if override and override.missed_threshold else threshold,
                         agent.spec.in_maintenance(now), probe)


def judge_pod(pod: dict[str, Any] | None) -> ProbeVerdict:
    """A Pod's answer to the probe: gone or being deleted is planned; Running is up; anything else is down."""
    if pod is None:
        return ProbeVerdict(False, planned=True, detail="the Pod no longer exists")
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return ProbeVerdict(False, planned=True, detail="the Pod is being deleted")
    phase = status.get("phase") or "Unknown"
    if phase == "Running":
        return ProbeVerdict(True, detail="the Pod is Running")
    return ProbeVerdict(False, detail=f"the Pod {metadata.get('name', '')} is {phase}")


async def probe_host(target: HostTarget) -> ProbeVerdict:
    try:
        async with asyncio.timeout(target.timeout):
            _, writer = await asyncio.open_connection(target.address, target.port)
    except (OSError, TimeoutError) as exc:
        return ProbeVerdict(False, detail=f"TCP connect to {target.address}:{target.port} failed ({exc or 'timeout'})")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeVerdict(True, detail=f"{target.address}:{target.port} accepts connections")


def seconds(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


class WatcherService:
    """Runs the HeartbeatWatcher for the agents this server watches (see the module docstring)."""

    def __init__(self, *, member: str, presence: PresenceLedger, pool: Callable[[], Awaitable[asyncpg.Pool]],
                 interval: float, threshold: int, flush_seconds: float, probe_timeout: float,
                 live: Callable[[], frozenset[str]] | None = None, catalog: AgentCatalog | None = None,
                 kube: Kube | None = None, status: AgentStatusWriter | None = None) -> None:
        self.member = member
        self.presence = presence
        self.pool = pool
        self.interval = interval
        self.threshold = threshold
        self.flush_seconds = flush_seconds
        self.probe_timeout = probe_timeout
        self.live = live or (lambda: frozenset({member}))
        self.fleet_known: Callable[[], bool] = lambda: True  # False until the Agents and Leases were first listed
        self.catalog = catalog
        self.kube = kube
        self.status = status
        self.watcher = HeartbeatWatcher(default_interval=interval, default_threshold=threshold)
        self.health = AgentHealthBook()
        self.raised = 0
        self.resolved = 0
        self._dirty: dict[str, AgentPresence] = {}
        self._rows: dict[str, PresenceRow] = {}
        self._active: dict[str, set[str]] = {}
        self._since: datetime | None = None
        self._pending: list[WatchEvent] = []
        self._held: dict[str, AlertRaised] = {}  # a pod agent's Heartbeat Failure, until its probe answered
        self._probes: set[asyncio.Task[None]] = set()
        self._closing: list[str] = []
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()
        presence.listeners.append(self)

    # --- what the streams on this server report (synchronous, on the event loop) ---

    def presence_changed(self, before: AgentPresence | None, after: AgentPresence) -> None:
        agent = after.agent
        self._dirty[agent] = after
        if not self.ready.is_set():
            return
        now = time.time()
        if after.goodbye_at is not None and (before is None or before.goodbye_at is None):
            self._pending += self.watcher.goodbye(agent, now)
        elif after.connected and (before is None or not before.connected or before.session_id != after.session_id
                                  or before.heartbeat_seq != after.heartbeat_seq):
            if agent not in self.watcher and self._approved(agent):
                self._take(agent, now)
            if agent in self.watcher:
                self._pending += self.watcher.heartbeat(agent, now)
                self._observe(agent)
        elif not after.connected:
            self._observe(agent)
        self._wake.set()

    def batch_committed(self, batch: Batch) -> None:
        """The operational DB committed a batch here: its state changes move the health of an agent we watch."""
        if ItemKind.STATE not in LANE_KINDS[batch.lane]:
            return  # a bulk batch: hundreds of events and samples, never a state change
        changes = [item for item in batch.items if isinstance(item, StateChange)]
        if changes and self.health.committed(batch.agent, changes):
            self._observe(batch.agent)

    # --- the loop ---

    async def run(self) -> None:
        last_refresh = 0.0
        while True:
            now = time.time()
            if now - last_refresh >= self.flush_seconds:
                try:
                    await self._refresh(now)
                    if self.fleet_known():
                        self.ready.set()
                    await self._read_health(now)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("watcher refresh failed", extra={"fields": {"error": str(exc)}})
                last_refresh = now
            if self.ready.is_set():
                events, self._pending = self._pending + self.watcher.due(time.time()), []
                await self._apply(events)
            deadline = min(self.watcher.next_deadline() or float("inf"), last_refresh + self.flush_seconds)
            self._wake.clear()
            if not self._pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline - time.time())):
                        await self._wake.wait()

    def closing(self) -> None:
        """The server is about to close its streams: remember which were open."""
        self._closing = [agent for agent, presence in self.presence.agents.items() if presence.connected]

    async def stop(self) -> None:
        """After the server closed its streams: flush their disconnects, so the next watcher starts from them.

        The streams were closed by us, not lost by the agents: each counts as alive until its close, so the server
        an agent moves to (or the one that watches it meanwhile) gives it a full window from then.
        """
        for task in self._probes:
            task.cancel()
        for agent in self._closing:
            presence = self.presence.agents[agent]
            closed_at = presence.disconnected_at or datetime.now(UTC)
            if presence.session_id and presence.goodbye_at is None:
                self._dirty[agent] = replace(presence, connected=False, disconnected_at=closed_at,
                                             last_heartbeat_at=max(presence.last_heartbeat_at or closed_at, closed_at))
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self._flush()

    async def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        rows = [PresenceRow(p.agent, self.member, p.session_id or "", p.connected, p.connected_at or datetime.now(UTC),
                            p.last_heartbeat_at, p.goodbye_at) for p in dirty.values()]
        try:
            async with (await self.pool()).acquire() as conn:
                await record_presence(conn, rows)
        except BaseException:
            self._dirty = {**dirty, **self._dirty}  # written next time
            raise

    async def _refresh(self, now: float) -> None:
        await self._flush()
        async with (await self.pool()).acquire() as conn:
            if self._since is None:
                # Rows that say a stream is on us but that no stream of ours holds are from before a restart.
                await disown_presence(conn, self.member, [p.session_id for p in self.presence.agents.values()
                                                          if p.connected and p.session_id])
            rows = await presence_changed_since(conn, self._since - READ_MARGIN if self._since else None)
            self._active = {agent: {ALERT_NAMES[s] for s in sources}
                            for agent, sources in (await active_alerts(conn, list(ALERT_SOURCES.values()))).items()}
        for row in rows:
            self._rows[row.agent] = row
            if row.updated_at is not None and (self._since is None or row.updated_at > self._since):
                self._since = row.updated_at
        if not self.fleet_known():
            return  # deciding ownership on a partial view would take (or drop) agents that are not ours
        self._assign(now)
        for row in rows:
            self._remote_presence(row, now)
        await self._resolve_stale(now)

    def _candidates(self) -> Iterable[str]:
        if self.catalog is not None:
            return list(self.catalog.by_fqdn)
        return set(self._rows) | {p.agent for p in self.presence.agents.values() if p.connected}

    def _approved(self, agent: str) -> bool:
        if self.catalog is None:
            return True
        found = self.catalog.get(agent)
        return found is not None and found.status.approval is Approval.APPROVED

    def _connected_to(self, agent: str) -> str | None:
        local = self.presence.get(agent)
        if local is not None and local.connected:
            return self.member
        row = self._rows.get(agent)
        return row.server if row is not None and row.connected and row.server != self.member else None

    def _member_key(self, agent: str) -> str:
        found = self.catalog.get(agent) if self.catalog is not None else None
        return (found.metadata.name or agent) if found is not None else agent

    def _assign(self, now: float) -> None:
        """Start watching the agents that became ours, stop those that did not stay ours; re-tune the rest."""
        live = self.live()
        for agent in self._candidates():
            mine = self._approved(agent) and watcher_of(self._member_key(agent), live,
                                                        self._connected_to(agent)) == self.member
            if mine and agent not in self.watcher:
                self._take(agent, now)
            elif not mine and agent in self.watcher:
                self.watcher.forget(agent)
                self.health.drop(agent)
                self._held.pop(agent, None)
            elif mine:
                self._tune(agent, now)
        for agent in self.watcher.agents():
            if self.catalog is not None and not self._approved(agent):
                self._observe(agent)  # its last word: health Unknown, as an agent that is not approved has
                self.watcher.forget(agent)  # deleted, rejected or back to pending
                self.health.drop(agent)

    def _take(self, agent: str, now: float) -> None:
        found = self.catalog.get(agent) if self.catalog is not None else None
        row = self._rows.get(agent)
        last = seconds(row.last_heartbeat_at if row else None) or seconds(
            found.status.last_heartbeat_time if found else None) or seconds(
            found.metadata.creation_timestamp if found else None) or now
        settings = self._settings(found)
        self.watcher.watch(agent, now, last_heartbeat=min(last, now), interval=settings.interval,
                           threshold=settings.threshold, open_alerts=frozenset(self._active.get(agent, ())))
        self.watcher.set_maintenance(agent, settings.in_maintenance, now)
        self.health.take(agent, now)
        if row is not None and not row.connected and row.goodbye_at is not None:
            self.watcher.goodbye(agent, now)
        self._observe(agent)
        log.info("watching agent", extra={"fields": {"agent": agent, "since": last, "open": sorted(
            self._active.get(agent, ()))}})

    def _tune(self, agent: str, now: float) -> None:
        settings = self._settings(self.catalog.get(agent) if self.catalog is not None else None)
        self.watcher.watch(agent, now, interval=settings.interval, threshold=settings.threshold)
        self._pending += self.watcher.set_maintenance(agent, settings.in_maintenance, now)

    def _settings(self, found: Agent | None) -> WatchSettings:
        return settings_for(found, interval=self.interval, threshold=self.threshold,
                            probe_timeout=self.probe_timeout, now=datetime.now(UTC))

    def _remote_presence(self, row: PresenceRow, now: float) -> None:
        """A stream on another server (or a closed one) spoke: its heartbeats count for the agents we watch."""
        agent = row.agent
        local = self.presence.get(agent)
        if agent not in self.watcher or (local is not None and local.connected):
            return
        last = self.watcher.last_heartbeat(agent)
        beat = seconds(row.last_heartbeat_at)
        if beat is not None and last is not None and beat > last:
            self._pending += self.watcher.heartbeat(agent, min(beat, now))
            self._observe(agent)
        if not row.connected and row.goodbye_at is not None:
            self._pending += self.watcher.goodbye(agent, now)

    async def _resolve_stale(self, now: float) -> None:
        """Alerts open in the DB for agents we judge OK (raised by a server that since lost them) are resolved."""
        stale = [(agent, name) for agent, names in self._active.items()
                 if agent in self.watcher and self.watcher.status(agent) is HeartbeatStatus.OK
                 for name in names - self.watcher.open_alerts(agent)]
        await self._apply([AlertResolved(agent, name, now) for agent, name in stale])

    async def _read_health(self, now: float) -> None:
        """Read back the monitor states of the agents we took over (and once more after they settled)."""
        agents = self.health.reads_due(now)
        if not agents:
            return
        async with (await self.pool()).acquire() as conn:
            found = await latest_states(conn, agents)
        for agent in agents:
            if self.health.read(agent, found.get(agent, ()), now):
                self._observe(agent)

    # --- carrying out the watcher's decisions ---

    async def _apply(self, events: list[WatchEvent]) -> None:
        for event in events:
            if isinstance(event, AlertRaised):
                if event.name == HEARTBEAT_FAILURE and isinstance(self._probe_target(event.agent), PodTarget):
                    self._held[event.agent] = event  # written once the Pod says it is not being removed
                else:
                    await self._write_raise(event)
            elif isinstance(event, AlertResolved):
                held = self._held.get(event.agent)
                if held is not None and held.name == event.name:
                    del self._held[event.agent]
                else:
                    await self._write_resolve(event)
            elif isinstance(event, ProbeRequested):
                task = asyncio.create_task(self._probe(event.agent), name=f"probe-{event.agent}")
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
            elif isinstance(event, StatusChanged):
                self._observe(event.agent)

    def _probe_target(self, agent: str) -> HostTarget | PodTarget | None:
        return self._settings(self.catalog.get(agent) if self.catalog is not None else None).probe

    async def _probe(self, agent: str) -> None:
        target = self._probe_target(agent)
        verdict = ProbeVerdict(True, detail="no probe configured")
        try:
            if isinstance(target, HostTarget):
                verdict = await probe_host(target)
            elif isinstance(target, PodTarget) and self.kube is not None:
                verdict = judge_pod(await self.kube.get("v1", "Pod", target.namespace, target.name))
        except (KubeError, OSError, TimeoutError) as exc:
            verdict = ProbeVerdict(True, detail=f"the probe could not ask ({exc}); assuming the computer is up")
        now = time.time()
        if verdict.planned:
            self._pending += self.watcher.planned_removal(agent, now)
        else:
            held = self._held.pop(agent, None)
            if held is not None:
                await self._write_raise(held)
            self._pending += self.watcher.probe_result(agent, verdict.reachable, now, verdict.detail)
        log.info("probe answered", extra={"fields": {"agent": agent, "reachable": verdict.reachable,
                                                     "planned": verdict.planned, "detail": verdict.detail}})
        self._wake.set()

    async def _write_raise(self, event: AlertRaised) -> None:
        async with (await self.pool()).acquire() as conn:
            opened = await raise_agent_alert(
                conn, agent=event.agent, object_key=OBJECT_KEYS[event.name], source=ALERT_SOURCES[event.name],
                name=event.name, description=event.description, severity=AlertSeverity.CRITICAL,
                priority=AlertPriority.HIGH, raised_at=datetime.fromtimestamp(event.at, UTC))
        self.raised += opened
        self._active.setdefault(event.agent, set()).add(event.name)
        log.warning("alert raised", extra={"fields": {"agent": event.agent, "alert": event.name, "opened": opened,
                                                      "description": event.description}})

    async def _write_resolve(self, event: AlertResolved) -> None:
        async with (await self.pool()).acquire() as conn:
            resolved = await resolve_agent_alert(conn, agent=event.agent, object_key=OBJECT_KEYS[event.name],
                                                 source=ALERT_SOURCES[event.name],
                                                 resolved_at=datetime.fromtimestamp(event.at, UTC))
        self.resolved += resolved
        self._active.get(event.agent, set()).discard(event.name)
        if resolved:
            log.info("alert resolved", extra={"fields": {"agent": event.agent, "alert": event.name}})

    # --- the Agent's status ---

    def _observe(self, agent: str) -> None:
        if self.status is None or self.catalog is None:
            return
        found = self.catalog.get(agent)
        status = self.watcher.status(agent)
        if found is None or status is None:
            return
        local = self.presence.get(agent)
        row = self._rows.get(agent)
        if local is not None and (local.connected or row is None or row.server == self.member):
            connection = Connection.CONNECTED if local.connected else Connection.DISCONNECTED
            server, last, queue = self.member, local.last_heartbeat_at or local.connected_at, local.queue
        elif row is not None:
            connected = row.connected and row.server in self.live()
            connection = Connection.CONNECTED if connected else Connection.DISCONNECTED
            server, last, queue = row.server, row.last_heartbeat_at or row.connected_at, None
        else:
            connection, server, last, queue = Connection.NEVER_CONNECTED, None, None, None
        maintenance = found.spec.in_maintenance(datetime.now(UTC))
        health = decided_health(self.health.rollup(agent), approval=found.status.approval,
                                heartbeat=HeartbeatState(status.value), in_maintenance=maintenance)
        self.status.observe(found.metadata.name or fqdn_of(found), ObservedAgent(
            status, connection, server, last, queue, maintenance, health))
