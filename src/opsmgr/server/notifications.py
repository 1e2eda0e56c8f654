"""Notifications (Operations Manager's subscriptions): alerts pushed to Alertmanager's v2 API and to webhooks.

Every change of an alert or storm that matters to people (opened, resolution state, severity, storm membership;
not a repeat) becomes one outbox row per target whose `minimumSeverity` it meets; rows live in the operational
DB, so a restart neither loses nor repeats one. Deliveries are deduplicated by alert id (one row per target and
alert, the newest version wins), retried with exponential backoff on connection errors, timeouts, 408, 429 and
5xx, and abandoned on other 4xx (the payload or credentials are wrong; retrying cannot help; the error is kept).

Alertmanager forgets a firing alert whose endsAt passed, so firing alerts are re-sent every `resend_interval`
with endsAt four intervals ahead (Prometheus does the same); a resolved alert is sent with endsAt = its
resolution time. Members of a storm are not sent on their own once grouped: the storm is, listing every agent.
Webhooks get one JSON document per change, with an Idempotency-Key header so a receiver can drop retries.

The management server calls `Notifier.run` (or `scan` then `deliver_due`, every few seconds after
`group_alert_storms`), with targets from `targets_from_spec` and the bearer tokens read from their Secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from opsmgr.api.management_group import AlertSeverity as SeverityName
from opsmgr.api.management_group import NotificationTarget, NotificationType
from opsmgr.db.alert_lifecycle import SubjectKind
from opsmgr.db.model import FIRST_INACTIVE_RESOLUTION_STATE, AlertPriority, AlertSeverity
from opsmgr.db.notification_outbox import (
    AlertSnapshot,
    Enqueued,
    OutboxEntry,
    claim_due,
    enqueue,
    mark_delivered,
    mark_failed,
    scan_alert_changes,
)

log = logging.getLogger(__name__)

SEVERITY_OF_NAME: Mapping[SeverityName, AlertSeverity] = {
    SeverityName.INFORMATION: AlertSeverity.INFORMATION,
    SeverityName.WARNING: AlertSeverity.WARNING,
    SeverityName.CRITICAL: AlertSeverity.CRITICAL,
}
# Alertmanager's conventional severity label values.
SEVERITY_LABEL: Mapping[AlertSeverity, str] = {
    AlertSeverity.INFORMATION: "info", AlertSeverity.WARNING: "warning", AlertSeverity.CRITICAL: "critical"}
RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class DeliveryTarget:
    name: str
    type: NotificationType
    url: str
    minimum_severity: AlertSeverity = AlertSeverity.WARNING
    bearer_token: str | None = None

    def accepts(self, snapshot: AlertSnapshot) -> bool:
        return snapshot.severity >= self.minimum_severity


def targets_from_spec(targets: Sequence[NotificationTarget],
                      tokens: Mapping[str, str] | None = None) -> list[DeliveryTarget]:
    """The ManagementGroup's notification targets; `tokens` maps a target name to its Secret's bearer token."""
    tokens = tokens or {}
    return [DeliveryTarget(t.name, t.type, t.url, SEVERITY_OF_NAME[t.minimum_severity], tokens.get(t.name))
            for t in targets]


# --- Pure: what to send --------------------------------------------------------------------------------------------


def is_resolved(snapshot: AlertSnapshot) -> bool:
    return snapshot.resolution_state >= FIRST_INACTIVE_RESOLUTION_STATE


def fingerprint(snapshot: AlertSnapshot) -> str:
    """What makes a notification worth sending again: not the repeat count, which only says it happened again."""
    status = "resolved" if is_resolved(snapshot) else "firing"
    return (f"{status}:{snapshot.resolution_state}:{snapshot.severity}:{snapshot.priority}:"
            f"{','.join(sorted(snapshot.agents))}")


def notification(snapshot: AlertSnapshot, group: str) -> dict[str, Any]:
    """The target-neutral document stored in the outbox and rendered per target type when sent."""
    return {
        "id": str(snapshot.subject_id),
        "kind": snapshot.kind.value,
        "status": "resolved" if is_resolved(snapshot) else "firing",
        "managementGroup": group,
        "name": snapshot.name,
        "description": snapshot.description,
        "severity": AlertSeverity(snapshot.severity).name.title(),
        "priority": AlertPriority(snapshot.priority).name.title(),
        "resolutionState": snapshot.resolution_state,
        "repeatCount": snapshot.repeat_count,
        "agents": list(snapshot.agents),
        "objectKey": snapshot.object_key,
        "source": snapshot.source,
        "raisedAt": snapshot.raised_at.isoformat(),
        "resolvedAt": snapshot.resolved_at.isoformat() if snapshot.resolved_at else None,
    }


def plan_notifications(snapshots: Sequence[AlertSnapshot], targets: Sequence[DeliveryTarget],
                       group: str) -> list[Enqueued]:
    """One outbox row per (target, alert or storm) to notify; storm members are told through their storm."""
    planned = []
    for snapshot in snapshots:
        if snapshot.in_storm:
            continue
        document = notification(snapshot, group)
        for target in targets:
            if target.accepts(snapshot):
                refresh = target.type is NotificationType.ALERTMANAGER and not is_resolved(snapshot)
                planned.append(Enqueued(target.name, snapshot.subject_id, document, fingerprint(snapshot),
                                        snapshot.version, refresh))
    return planned


def alertmanager_alert(document: Mapping[str, Any], now: datetime, resend_interval: timedelta,
                       console_url: str | None) -> dict[str, Any]:
    """One element of Alertmanager's POST /api/v2/alerts body (postableAlert)."""
    severity = SEVERITY_LABEL[AlertSeverity[document["severity"].upper()]]
    labels = {"alertname": document["name"], "severity": severity, "managementgroup": document["managementGroup"],
              "alert_id": document["id"], "source": document["source"]}
    if document["kind"] == SubjectKind.ALERT.value:
        labels |= {"agent": document["agents"][0], "object_key": document["objectKey"]}
    annotations = {"description": document["description"], "priority": document["priority"],
                   "resolution_state": str(document["resolutionState"]),
                   "repeat_count": str(document["repeatCount"]), "agents": ", ".join(document["agents"])}
    ends = document["resolvedAt"] if document["status"] == "resolved" else (now + 4 * resend_interval).isoformat()
    alert = {"labels": {k: v for k, v in labels.items() if v}, "annotations": annotations,
             "startsAt": document["raisedAt"], "endsAt": ends}
    if console_url:
        alert["generatorURL"] = f"{console_url.rstrip('/')}/alerts/{document['id']}"
    return alert


def retry_delay(attempts: int, initial: float, maximum: float, jitter: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `attempts` (1-based): doubling from `initial`, capped, with +-20 % jitter."""
    base = min(initial * 2.0 ** max(attempts - 1, 0), maximum)
    return base * (0.8 + 0.4 * jitter())


class DeliveryError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


# --- Talking: HTTP and the outbox ----------------------------------------------------------------------------------


@dataclass
class NotificationSettings:
    group: str
    targets: Sequence[DeliveryTarget]
    console_url: str | None = None
    resend_interval: timedelta = timedelta(minutes=1)
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    lease: timedelta = timedelta(seconds=30)
    request_timeout: float = 10.0
    batch_size: int = 100
    tick_seconds: float = 5.0
    jitter: Callable[[], float] = field(default=random.random)


@dataclass(frozen=True)
class DeliveryReport:
    delivered: int
    retried: int
    abandoned: int


class Notifier:
    """Scans alert changes into the outbox and delivers what is due; several servers may run one each."""

    def __init__(self, settings: NotificationSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
        self._targets = {target.name: target for target in settings.targets}

    async def scan(self, conn: asyncpg.Connection) -> int:
        """Turn alert and storm changes since the last scan into pending deliveries; returns how many."""
        snapshots, _, watermark = await scan_alert_changes(conn)
        planned = plan_notifications(snapshots, self.settings.targets, self.settings.group)
        return await enqueue(conn, planned, watermark)

    async def deliver_due(self, conn: asyncpg.Connection, *, now: datetime | None = None) -> DeliveryReport:
        moment = now or datetime.now(UTC)
        due = await claim_due(conn, list(self._targets), moment, self.settings.lease, self.settings.batch_size)
        delivered = retried = abandoned = 0
        for entry, outcome in zip(due, await asyncio.gather(*(self._send(e, moment) for e in due)), strict=True):
            if outcome is None:
                refresh = self._targets[entry.target].type is NotificationType.ALERTMANAGER \
                    and entry.payload["status"] == "firing"
                await mark_delivered(conn, entry, moment + self.settings.resend_interval if refresh else None)
                delivered += 1
            elif outcome.retryable:
                delay = retry_delay(entry.attempts + 1, self.settings.initial_backoff, self.settings.max_backoff,
                                    self.settings.jitter)
                await mark_failed(conn, entry, str(outcome), moment + timedelta(seconds=delay))
                retried += 1
            else:
                await mark_failed(conn, entry, str(outcome), None)
                abandoned += 1
                log.warning("notification abandoned", extra={"fields": {
                    "target": entry.target, "alert": str(entry.subject_id), "error": str(outcome)}})
        return DeliveryReport(delivered, retried, abandoned)

    async def run(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """Scan and deliver every tick until `stop` is set; a database or network error waits for the next tick."""
        while not stop.is_set():
            try:
                async with pool.acquire() as conn:
                    await self.scan(conn)
                    await self.deliver_due(conn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("notification pass failed", extra={"fields": {"error": str(exc)}})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.tick_seconds):
                    await stop.wait()

    async def _send(self, entry: OutboxEntry, now: datetime) -> DeliveryError | None:
        target = self._targets[entry.target]
        headers = {"Authorization": f"Bearer {target.bearer_token}"} if target.bearer_token else {}
        if target.type is NotificationType.ALERTMANAGER:
            url = f"{target.url.rstrip('/')}/api/v2/alerts"
            body: Any = [alertmanager_alert(entry.payload, now, self.settings.resend_interval,
                                            self.settings.console_url)]
        else:
            url, body = target.url, entry.payload
            headers["Idempotency-Key"] = f"{entry.subject_id}:{entry.fingerprint}"
        try:
            async with self.session.post(url, json=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout)) as reply:
                if reply.status < 300:
                    return None
                text = (await reply.text())[:500]
                retryable = reply.status >= 500 or reply.status in RETRYABLE_STATUSES
                return DeliveryError(f"{target.name}: {url} answered {reply.status}: {text}", retryable=retryable)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return DeliveryError(f"{target.name}: {url}: {type(exc).__name__}: {exc}", retryable=True)
