"""Notifications to a real HTTP receiver on 127.0.0.1 that speaks Alertmanager's v2 API, and to a webhook."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from opsmgr.api.management_group import NotificationType
from opsmgr.db.alert_lifecycle import SubjectKind, set_resolution_state
from opsmgr.db.model import AlertSeverity, Lane, ResolutionState
from opsmgr.db.writer import write_operational
from opsmgr.server.notifications import DeliveryTarget, NotificationSettings, Notifier
from tests.integration.db.conftest import Databases
from tests.unit.db.builders import alert, batch


@dataclass
class Receiver:
    """Alertmanager's POST /api/v2/alerts and a webhook, failing the first `failures` requests with 503."""

    failures: int = 0
    alertmanager: list[list[dict[str, Any]]] = field(default_factory=list)
    webhook: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: int = 0
    url: str = ""

    async def alerts(self, request: web.Request) -> web.Response:
        if self.refused < self.failures:
            self.refused += 1
            return web.Response(status=503, text="cluster not ready")
        body = await request.json()
        assert isinstance(body, list) and {"labels", "startsAt", "endsAt"} <= body[0].keys()
        self.alertmanager.append(body)
        return web.Response(status=200)

    async def hook(self, request: web.Request) -> web.Response:
        self.webhook.append((request.headers["Idempotency-Key"], await request.json()))
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(failures=3)
    app = web.Application()
    app.router.add_post("/api/v2/alerts", state.alerts)
    app.router.add_post("/hook", state.hook)
    async with serve(app) as url:
        state.url = url
        yield state


async def deliver_until(notifier: Notifier, databases: Databases, done: Any, passes: int = 100) -> None:
    for _ in range(passes):
        await notifier.scan(databases.operational)
        await notifier.deliver_due(databases.operational)
        if done():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the receiver never got the notification")


async def test_alertmanager_gets_the_alert_after_retries_and_then_its_resolution(
        databases: Databases, receiver: Receiver) -> None:
    op = databases.operational
    targets = [DeliveryTarget("am", NotificationType.ALERTMANAGER, receiver.url),
               DeliveryTarget("hook", NotificationType.WEBHOOK, f"{receiver.url}/hook", AlertSeverity.WARNING)]
    settings = NotificationSettings("contoso", targets, initial_backoff=0.01, max_backoff=0.05,
                                    jitter=lambda: 0.5)
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(1, datetime.now(UTC))]))
    alert_id = await op.fetchval("SELECT alert_id FROM alerts")
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(settings, session)
        await deliver_until(notifier, databases, lambda: receiver.alertmanager and receiver.webhook)
        assert receiver.refused == 3
        (firing,) = receiver.alertmanager[0]
        assert firing["labels"]["alert_id"] == str(alert_id)
        assert firing["labels"]["alertname"] == "Low disk space" and firing["labels"]["severity"] == "warning"
        assert datetime.fromisoformat(firing["endsAt"]) > datetime.now(UTC)
        key, document = receiver.webhook[0]
        assert document["status"] == "firing" and key.startswith(str(alert_id))

        # A repeat of the same alert is no news: nothing is sent again, to either target.
        await write_operational(op, batch(1, Lane.PRIORITY, [alert(1, datetime.now(UTC))]))
        await notifier.scan(op)
        await notifier.deliver_due(op)
        assert (len(receiver.alertmanager), len(receiver.webhook)) == (1, 1)

        await set_resolution_state(op, SubjectKind.ALERT, alert_id, int(ResolutionState.RESOLVED))
        resolved_at = await op.fetchval("SELECT resolved_at FROM alerts")
        await deliver_until(notifier, databases, lambda: len(receiver.alertmanager) == 2 and len(receiver.webhook) == 2)
    (resolved,) = receiver.alertmanager[1]
    assert datetime.fromisoformat(resolved["endsAt"]) == resolved_at
    assert receiver.webhook[1][1]["status"] == "resolved"
    rows = await op.fetch("SELECT target, status, delivered_fingerprint = fingerprint AS done FROM notification_outbox")
    assert sorted((r["target"], r["status"], r["done"]) for r in rows) == [("am", "delivered", True),
                                                                           ("hook", "delivered", True)]


async def test_a_restart_delivers_what_the_previous_server_enqueued(databases: Databases, receiver: Receiver) -> None:
    receiver.failures = 0
    op = databases.operational
    settings = NotificationSettings("contoso", [DeliveryTarget("hook", NotificationType.WEBHOOK,
                                                               f"{receiver.url}/hook")])
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(1, datetime.now(UTC))]))
    async with aiohttp.ClientSession() as session:
        assert await Notifier(settings, session).scan(op) == 1  # then the server dies before delivering
    async with aiohttp.ClientSession() as session:
        restarted = Notifier(settings, session)
        assert await restarted.scan(op) == 0
        report = await restarted.deliver_due(op)
    assert report.delivered == 1 and len(receiver.webhook) == 1
    assert json.dumps(receiver.webhook[0][1]["agents"]) == '["web01.contoso.test"]'


async def test_a_refused_payload_is_abandoned_with_its_error_kept(databases: Databases) -> None:
    async def refuse(_: web.Request) -> web.Response:
        return web.Response(status=400, text="bad labels")

    app = web.Application()
    app.router.add_post("/api/v2/alerts", refuse)
    op = databases.operational
    await write_operational(op, batch(0, Lane.PRIORITY, [alert(1, datetime.now(UTC))]))
    async with serve(app) as url, aiohttp.ClientSession() as session:
        settings = NotificationSettings("contoso", [DeliveryTarget("am", NotificationType.ALERTMANAGER, url)])
        notifier = Notifier(settings, session)
        await notifier.scan(op)
        assert (await notifier.deliver_due(op)).abandoned == 1
    row = await op.fetchrow("SELECT status, last_error FROM notification_outbox")
    assert row["status"] == "abandoned" and "answered 400: bad labels" in row["last_error"]
