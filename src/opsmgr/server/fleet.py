"""The management-server fleet: who is alive (Kubernetes Leases) and which server watches which agent (pure).

Membership: each server holds one Lease (`opsmgr-server-<group>-<member>`, labelled with the group) and renews it
every `renew_seconds`; a server whose Lease was not renewed for `lease_seconds` is dead, and a server that stops
cleanly deletes its Lease so the others take over at once. Expiry is judged by each observer's own monotonic clock
(when it last saw the Lease change), as client-go's leader election does, so clock skew between servers never
kills a live one; a Lease seen for the first time gets a full `lease_seconds` of grace.

Who watches an agent (`watcher_of`): the live server its stream is on, else the first live server in the agent's
rendezvous ranking. The operator ranks agents over the same servers with the same hash for their primary server,
so in a healthy fleet an agent is watched where it is connected and its heartbeats never leave that server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from opsmgr.kubeio.kube import Kube, KubeError, Ref
from opsmgr.protocol.rendezvous import rank

log = logging.getLogger(__name__)

LEASE_API = "coordination.k8s.io/v1"
GROUP_LABEL = "opsmgr.io/group"
COMPONENT_LABEL = "app.kubernetes.io/component"
LEASE_COMPONENT = "management-server-lease"


def lease_name(group: str, member: str) -> str:
    return f"opsmgr-server-{group}-{member}"[:253]


def watcher_of(member_key: str, live: Iterable[str], connected_to: str | None) -> str | None:
    """The server that watches one agent: where its stream is, if that server lives; else its rendezvous first."""
    servers = sorted(live)
    if connected_to is not None and connected_to in servers:
        return connected_to
    ranked = rank(member_key, servers)
    return ranked[0] if ranked else None


@dataclass(frozen=True)
class LeaseSighting:
    """What an observer remembers of a Lease: its last renewTime and when (monotonic, its own clock) that changed."""

    renew_time: str
    seen_changing_at: float
    duration_seconds: float


def observe(previous: Mapping[str, LeaseSighting], leases: Iterable[tuple[str, str, float]],
            now: float) -> dict[str, LeaseSighting]:
    """Fold one listing of (holder, renewTime, leaseDurationSeconds) into the sightings; absent Leases are gone."""
    sightings = {}
    for holder, renew_time, duration in leases:
        before = previous.get(holder)
        changed_at = now if before is None or before.renew_time != renew_time else before.seen_changing_at
        sightings[holder] = LeaseSighting(renew_time, changed_at, duration)
    return sightings


def live_members(sightings: Mapping[str, LeaseSighting], now: float, me: str) -> frozenset[str]:
    """Holders whose Lease changed within its duration; this server counts as live while it runs."""
    alive = {holder for holder, s in sightings.items() if now - s.seen_changing_at <= s.duration_seconds}
    return frozenset(alive | {me})


class LeaseMembership:
    """This server's Lease and its view of the others'; `live` is what `watcher_of` ranks over."""

    def __init__(self, kube: Kube, *, namespace: str, group: str, member: str, lease_seconds: float,
                 renew_seconds: float) -> None:
        self.kube = kube
        self.namespace = namespace
        self.group = group
        self.member = member
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.live: frozenset[str] = frozenset({member})
        self.observed = asyncio.Event()  # unset until the first listing: `live` knows only this server till then
        self._sightings: dict[str, LeaseSighting] = {}
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self._ref = Ref(LEASE_API, "Lease", namespace, lease_name(group, member))

    def on_change(self, listener: Callable[[frozenset[str]], None]) -> None:
        self._listeners.append(listener)

    def _manifest(self) -> dict[str, object]:
        return {"apiVersion": LEASE_API, "kind": "Lease",
                "metadata": {"name": self._ref.name, "namespace": self.namespace,
                             "labels": {GROUP_LABEL: self.group, COMPONENT_LABEL: LEASE_COMPONENT}},
                "spec": {"holderIdentity": self.member, "leaseDurationSeconds": max(1, round(self.lease_seconds)),
                         "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}

    async def renew(self) -> None:
        manifest = self._manifest()
        try:
            await self.kube.merge_patch(self._ref, {"spec": manifest["spec"]})
        except KubeError as error:
            if error.status != 404:
                raise
            await self.kube.create(manifest)

    async def refresh(self) -> frozenset[str]:
        leases = await self.kube.list(LEASE_API, "Lease", self.namespace,
                                      {GROUP_LABEL: self.group, COMPONENT_LABEL: LEASE_COMPONENT})
        # leaseDurationSeconds is whole seconds; our own setting is finer, and every server of a group shares it.
        listed = [(str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""), self.lease_seconds)
                  for spec in (lease.get("spec") or {} for lease in leases) if spec.get("holderIdentity")]
        now = time.monotonic()
        self._sightings = observe(self._sightings, listed, now)
        live = live_members(self._sightings, now, self.member)
        self.observed.set()
        if live != self.live:
            log.info("fleet changed", extra={"fields": {"live": sorted(live), "joined": sorted(live - self.live),
                                                        "left": sorted(self.live - live)}})
            self.live = live
            for listener in self._listeners:
                listener(live)
        return live

    async def run(self) -> None:
        """Renew and look around every `renew_seconds` until cancelled; API trouble is logged and retried."""
        while True:
            try:
                await self.renew()
                await self.refresh()
            except (KubeError, OSError, TimeoutError) as exc:
                log.warning("lease renewal failed", extra={"fields": {"lease": self._ref.name, "error": str(exc)}})
            await asyncio.sleep(self.renew_seconds)

    async def leave(self) -> None:
        """A clean stop: delete our Lease so the others take our agents over now, not after it expires."""
        with contextlib.suppress(KubeError, OSError, TimeoutError):
            await self.kube.delete(LEASE_API, "Lease", self.namespace, self._ref.name or "")
