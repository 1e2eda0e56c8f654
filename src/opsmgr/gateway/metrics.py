"""The gateway's Prometheus metrics, and `/metrics` + `/healthz` on their own port.

`/healthz` is the gateway's health as the Gateway status shows it: the operator renders it as the pod's readiness
probe, so `status.readyReplicas` and the Available condition count only gateways that reach a management server;
its JSON body (server, relayed agents, last heartbeat) is what a person or a scraper reads. The gateway holds no
Kubernetes credentials: it stands outside the trust boundary, and a token there would be one more thing to steal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.relayed_agents = Gauge("opsmgr_gateway_relayed_agents", "Agent streams relayed now.", registry=r)
        self.messages = Counter("opsmgr_gateway_messages", "Messages relayed: agent messages by kind, and to_agent.",
                                ["kind"], registry=r)
        self.refusals = Counter("opsmgr_gateway_refusals", "Agent streams the gateway refused, by reason.",
                                ["reason"], registry=r)
        self.upstream_connected = Gauge("opsmgr_gateway_upstream_connected",
                                        "1 while connected to this management server.", ["server"], registry=r)
        self.upstream_connects = Counter("opsmgr_gateway_upstream_connects", "Connections made to servers.",
                                         registry=r)
        self.heartbeat = Gauge("opsmgr_gateway_heartbeat_timestamp_seconds",
                               "When the gateway last beat (its event loop is alive and serving).", registry=r)


class HealthPort:
    """Serves `/metrics` and `/healthz` (200 when healthy, else 503, with a JSON body either way)."""

    def __init__(self, metrics: GatewayMetrics, health: Callable[[], tuple[bool, dict[str, object]]]) -> None:
        self.metrics = metrics
        self.health = health
        self._runner: web.AppRunner | None = None

    async def start(self, address: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address, port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here; port 0 picks one in tests
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        healthy, details = self.health()
        return web.json_response(details, status=200 if healthy else 503)
