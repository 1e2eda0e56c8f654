"""The group's periodic duties, run by every management server: alert storms and notifications every few seconds,
warehouse aggregation a few minutes past every hour, grooming of both databases every hour.

Every replica runs them and none is elected: the database serialises each duty (advisory locks in
`group_alert_storms`, `aggregate_warehouse` and partition maintenance; leased rows in the notification outbox), so
two servers never group a storm twice, aggregate an hour twice or send a notification twice, and the duties go on
as long as one server does.

The settings follow the ManagementGroup: its retention (also the window the writers accept data in) and its
notification targets with their bearer tokens, re-read every `group_refresh_seconds`. A server without Kubernetes
access keeps Operations Manager's default retention and sends no notifications. A failed pass is logged and tried
again at the next tick; it never stops the server.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from opsmgr.api import ManagementGroup
from opsmgr.api.common import API_VERSION
from opsmgr.api.management_group import RetentionSpec
from opsmgr.db.aggregation import aggregate_warehouse
from opsmgr.db.alert_storms import group_alert_storms
from opsmgr.db.grooming import groom
from opsmgr.db.model import Database, Retention
from opsmgr.kubeio.kube import Kube, KubeError
from opsmgr.server.ingest import DatabaseLink
from opsmgr.server.notifications import DeliveryTarget, NotificationSettings, Notifier, targets_from_spec

log = logging.getLogger(__name__)
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True)
class GroupSettings:
    """What the duties take from the ManagementGroup."""

    retention: Retention
    targets: tuple[DeliveryTarget, ...] = ()


def retention_of(spec: RetentionSpec) -> Retention:
    return Retention(operational_days=spec.operational_days, warehouse_raw_days=spec.warehouse_raw_days,
                     warehouse_aggregated_days=spec.warehouse_aggregated_days, alert_days=spec.alert_days)


def next_hourly_run(now: datetime, minute: float) -> datetime:
    """The next moment `minute` minutes past an hour, after `now`: aggregation waits for an hour's late samples."""
    candidate = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(minutes=minute)
    while candidate <= now:
        candidate += timedelta(hours=1)
    return candidate


def token_of(secret: Mapping[str, object] | None, key: str) -> str | None:
    """The bearer token under `key` of a Secret as the API returns it (base64 data), or None when missing."""
    data = (secret or {}).get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get(key), str):
        return None
    return base64.b64decode(str(data[key])).decode(errors="replace").strip() or None


class GroupDuties:
    def __init__(self, *, group: str, links: Mapping[Database, DatabaseLink], alert_seconds: float,
                 aggregation_minute: float, groom_seconds: float, group_refresh_seconds: float,
                 console_url: str | None = None) -> None:
        self.group = group
        self.links = links
        self.alert_seconds = alert_seconds
        self.aggregation_minute = aggregation_minute
        self.groom_seconds = groom_seconds
        self.group_refresh_seconds = group_refresh_seconds
        self.console_url = console_url
        self.kube: Kube | None = None  # set when the server has Kubernetes access
        self.namespace = ""
        self.settings = GroupSettings(links[Database.OPERATIONAL].retention)
        self.passes: dict[str, int] = {"alerts": 0, "aggregation": 0, "grooming": 0}
        self._notifier: Notifier | None = None
        self._http: aiohttp.ClientSession | None = None

    def tasks(self) -> list[asyncio.Task[None]]:
        duties: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("alert-duties", self._alerts), ("warehouse-aggregation", self._aggregation), ("grooming", self._grooming)]
        if self.kube is not None:
            duties.append(("group-settings", self._follow_group))
        return [asyncio.create_task(run(), name=name) for name, run in duties]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- the ManagementGroup's settings ---

    async def _follow_group(self) -> None:
        while True:
            try:
                await self.refresh()
            except (KubeError, *FAILURES) as exc:
                log.warning("group settings not read; keeping the last ones", extra={"fields": {"error": str(exc)}})
            await asyncio.sleep(self.group_refresh_seconds)

    async def refresh(self) -> None:
        assert self.kube is not None
        body = await self.kube.get(API_VERSION, "ManagementGroup", self.namespace, self.group)
        if body is None:
            return
        spec = ManagementGroup.from_body(body).spec
        tokens: dict[str, str] = {}
        for target in spec.notifications:
            if target.credentials is None:
                continue
            token = token_of(await self.kube.get("v1", "Secret", self.namespace, target.credentials.name),
                             target.credentials.key)
            if token is None:
                log.warning("notification target without its token", extra={"fields": {
                    "target": target.name, "secret": target.credentials.name, "key": target.credentials.key,
                    "fix": "create the Secret with that key, holding the bearer token"}})
                continue
            tokens[target.name] = token
        self.apply(GroupSettings(retention_of(spec.retention), tuple(targets_from_spec(spec.notifications, tokens))))

    def apply(self, settings: GroupSettings) -> None:
        if settings == self.settings:
            return
        if settings.retention != self.settings.retention:
            for link in self.links.values():
                link.retention = settings.retention  # also the window the writers accept data in
            log.info("retention follows the group", extra={"fields": {"retention": str(settings.retention)}})
        if settings.targets != self.settings.targets:
            self._notifier = None  # rebuilt with the new targets at the next pass
            log.info("notification targets follow the group", extra={"fields": {
                "targets": [f"{t.name} ({t.type.value}, {t.url})" for t in settings.targets]}})
        self.settings = settings

    # --- the duties ---

    async def _alerts(self) -> None:
        while True:
            await self._guarded("alerts", self.alert_pass)
            await asyncio.sleep(self.alert_seconds)

    async def alert_pass(self) -> None:
        """Group storms first, so a storm's members are not notified one by one; then scan and deliver."""
        async with (await self.links[Database.OPERATIONAL].pool()).acquire() as conn:
            await group_alert_storms(conn)
            notifier = self._notifier_now()
            if notifier is not None:
                await notifier.scan(conn)
                await notifier.deliver_due(conn)

    def _notifier_now(self) -> Notifier | None:
        if not self.settings.targets:
            return None
        if self._notifier is None:
            if self._http is None:
                self._http = aiohttp.ClientSession()
            self._notifier = Notifier(NotificationSettings(self.group, self.settings.targets, self.console_url,
                                                           tick_seconds=self.alert_seconds), self._http)
        return self._notifier

    async def _aggregation(self) -> None:
        # Once at start: the hours completed while no server ran (or since this one stopped) are caught up now.
        await self._guarded("aggregation", self.aggregation_pass)
        while True:
            now = datetime.now(UTC)
            await asyncio.sleep((next_hourly_run(now, self.aggregation_minute) - now).total_seconds())
            await self._guarded("aggregation", self.aggregation_pass)

    async def aggregation_pass(self) -> None:
        async with (await self.links[Database.WAREHOUSE].pool()).acquire() as conn:
            report = await aggregate_warehouse(conn)
        log.info("warehouse aggregated", extra={"fields": {
            "hours": {k.value: v for k, v in report.hours.items()},
            "days": {k.value: v for k, v in report.days.items()},
            "late_hours": {k.value: v for k, v in report.dirty.items()}}})

    async def _grooming(self) -> None:
        while True:
            await self._guarded("grooming", self.grooming_pass)
            await asyncio.sleep(self.groom_seconds)

    async def grooming_pass(self) -> None:
        """Partitions ahead created, expired ones dropped, old rows deleted, per the group's retention."""
        for database, link in self.links.items():
            async with (await link.pool()).acquire() as conn:
                report = await groom(conn, database, self.settings.retention)
            if report.partitions_dropped or any(report.deleted.values()):
                log.info("database groomed", extra={"fields": {
                    "database": database.value, "partitions_dropped": list(report.partitions_dropped),
                    "deleted": dict(report.deleted)}})

    async def _guarded(self, duty: str, run: Callable[[], Awaitable[None]]) -> None:
        try:
            await run()
        except FAILURES as exc:
            log.warning(f"{duty} pass failed; tried again at the next tick", extra={"fields": {"error": str(exc)}})
            return
        self.passes[duty] += 1

