"""The group's periodic duties in real servers with Kubernetes access: notifications to the targets the
ManagementGroup names (with the bearer token from its Secret), the group's retention applied to what the writers
accept, and the warehouse's hourly aggregates caught up when a server starts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from opsmgr.api import ManagementGroup
from opsmgr.kubeio.kube import Kube
from opsmgr.operator.render import render_server_access
from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.health.test_notifications import serve
from tests.integration.server.client import AgentStream, Credentials, channel, stamp
from tests.integration.server.conftest import GROUP
from tests.integration.watcher.conftest import Fleet, create_agents, fqdn, until

pytestmark = pytest.mark.timeout(300)
TOKEN = "s3cr3t-am-token"


@dataclass
class Alertmanager:
    """POST /api/v2/alerts as Alertmanager takes it, remembering the bearer token each request carried."""

    received: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    async def alerts(self, request: web.Request) -> web.Response:
        self.received.append((request.headers.get("Authorization", ""), await request.json()))
        return web.Response(status=200)


@contextlib.asynccontextmanager
async def alertmanager() -> AsyncIterator[tuple[Alertmanager, str]]:
    receiver = Alertmanager()
    app = web.Application()
    app.router.add_post("/api/v2/alerts", receiver.alerts)
    async with serve(app) as url:
        yield receiver, url


async def create_group(kube: Kube, namespace: str, spec: dict[str, Any]) -> None:
    """The group as a person writes it, and the servers' Role as the operator renders it for that spec."""
    body = {"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup",
            "metadata": {"name": GROUP, "namespace": namespace}, "spec": spec}
    created = await kube.create(body)
    assert created is not None
    for manifest in render_server_access(ManagementGroup.from_body(created)):
        manifest["metadata"].pop("ownerReferences", None)
        await kube.apply(manifest)


def start(fleet: Fleet, **duties: Any) -> None:
    server = fleet.build(0)
    server.config["duties"] = {"alert_seconds": 0.5, "group_refresh_seconds": 1, **duties}
    server.start()


async def send(agent: Credentials, server_port: int, name: str, items: list[pb.Item],
               lane: pb.Lane) -> list[pb.Ack]:
    async with channel(server_port, agent) as chan:
        stream = AgentStream(chan)
        await stream.hello(fqdn(name))
        await stream.send(pb.AgentMessage(batch=pb.DataBatch(epoch=str(uuid.uuid4()), seq=0, lane=lane,
                                                             items=items)))
        return await stream.acks_until(2 if lane == pb.LANE_BULK else 1)


async def test_an_alert_reaches_the_groups_alertmanager_with_the_token_from_its_secret(
        fleet: Fleet, kube: Kube, namespace: str, agent_credentials: Callable[[str], Credentials]) -> None:
    async with alertmanager() as (receiver, url):
        await kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "am-token",
                                                                               "namespace": namespace},
                           "data": {"token": base64.b64encode(TOKEN.encode()).decode()}})
        await create_group(kube, namespace, {"notifications": [
            {"name": "am", "type": "Alertmanager", "url": url, "minimumSeverity": "Warning",
             "credentials": {"name": "am-token", "key": "token"}}]})
        await create_agents(kube, namespace, ["web01"])
        start(fleet)
        alert = pb.Item(alert=pb.Alert(raised_at=stamp(datetime.now(UTC)), object_key="Linux.FileSystem:/var",
                                       source="Linux.DiskFull", name="Disk full", description="/var at 97 %",
                                       severity=2, priority=1))
        [ack] = await send(agent_credentials("web01"), fleet.servers[0].agent_port, "web01", [alert],
                           pb.LANE_PRIORITY)
        assert ack.outcome == pb.Ack.OUTCOME_COMMITTED
        await until(lambda: receiver.received, 30, "Alertmanager receives the alert")
    authorization, alerts = receiver.received[0]
    assert authorization == f"Bearer {TOKEN}"
    assert alerts[0]["labels"]["alertname"] == "Disk full", alerts
    assert fqdn("web01") in str(alerts[0]["labels"]), alerts
    assert TOKEN not in fleet.servers[0].log_path.read_text(), "the token must never reach a log line"


async def test_the_groups_retention_decides_what_the_operational_db_keeps_and_the_warehouse_aggregates_at_start(
        fleet: Fleet, kube: Kube, namespace: str, agent_credentials: Callable[[str], Credentials]) -> None:
    await create_group(kube, namespace, {"retention": {"operationalDays": 1, "warehouseRawDays": 10}})
    await create_agents(kube, namespace, ["db01"])
    start(fleet)
    await until(lambda: (fleet.servers[0].healthz() or {}).get("duty_passes", {}).get("grooming"), 30,
                "the first grooming pass")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).replace(minute=10, second=0, microsecond=0)
    samples = [pb.Item(performance=pb.PerformanceSample(
        sampled_at=stamp(two_days_ago + timedelta(minutes=10 * n)), object_key="Linux.Computer:db01",
        object_name="Processor", counter_name="% Processor Time", instance_name="_Total", value=float(10 * n)))
        for n in range(4)]
    acks = await send(agent_credentials("db01"), fleet.servers[0].agent_port, "db01", samples, pb.LANE_BULK)
    assert {ack.outcome for ack in acks} == {pb.Ack.OUTCOME_COMMITTED}
    # Two days old: past the group's 1 day in the operational DB (dropped, counted), within the warehouse's 10.
    assert await _count(fleet.operational_dsn, "performance_samples") == 0
    assert await _count(fleet.operational_dsn, "late_data_drops", "sum(dropped)") == 4
    assert await _count(fleet.warehouse_dsn, "performance_samples") == 4
    # Those hours were aggregated (empty) when the server started; a restart catches the late samples up.
    server = fleet.servers[0]
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)
    hour = two_days_ago.replace(minute=0)
    row = await until(lambda: _hourly(fleet.warehouse_dsn, hour), 60, "the hour's aggregate")
    assert row["sample_count"] == 4 and row["min_value"] == 0.0 and row["max_value"] == 30.0, dict(row)


async def _count(dsn: str, table: str, what: str = "count(*)") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT coalesce({what}, 0) FROM {table}") or 0)
    finally:
        await conn.close()


async def _hourly(dsn: str, hour: datetime) -> asyncpg.Record | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow("SELECT * FROM performance_hourly WHERE hour = $1", hour)
    finally:
        await conn.close()
