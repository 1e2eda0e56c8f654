"""The gateway process: the listener on 5723, the connection to its management servers, its heartbeat, the
revocation watch and the health port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from grpc import aio

from opsmgr.gateway.config import GatewayConfig
from opsmgr.gateway.listener import GatewayListener
from opsmgr.gateway.metrics import GatewayMetrics, HealthPort
from opsmgr.gateway.relay import RelaySettings
from opsmgr.gateway.upstream import Upstream, UpstreamConnection, UpstreamSettings
from opsmgr.pki import CertificateError, Role
from opsmgr.pki.pem import load_certificate
from opsmgr.pki.revocation_watch import RevocationWatch
from opsmgr.pki.verify import check_identity
from opsmgr.protocol.transport import open_listener

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    agent_port: int
    metrics_port: int


class GatewayProcess:
    """Everything one `opsmgr gateway` runs."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.revocations = RevocationWatch(config.revocations.file, config.revocations.poll_seconds)
        up = config.upstream
        certificate, key = config.tls.upstream_identity()
        self.upstream = UpstreamConnection(UpstreamSettings(
            servers=tuple(config.servers), certificate=certificate, key=key,
            ca_bundle=config.tls.ca_bundle, tls_server_name=config.tls.server_name, backoff=up.backoff(),
            primary_attempts=up.primary_attempts, failback_seconds=up.failback_seconds,
            connect_timeout_seconds=up.connect_timeout_seconds))
        self.upstream.on_change(self._upstream_changed)
        self.listener = GatewayListener(
            group=config.group, upstream=self.upstream, revocations=self.revocations, metrics=self.metrics,
            settings=RelaySettings(up.welcome_timeout_seconds, up.goodbye_flush_seconds))
        self.health = HealthPort(self.metrics, self.healthz)
        self.last_heartbeat: datetime | None = None
        self._started = time.monotonic()
        self._grpc: aio.Server | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def healthz(self) -> tuple[bool, dict[str, object]]:
        """Healthy while agents are accepted and a management server is reachable to relay them to."""
        upstream = self.upstream.current
        serving = self._grpc is not None
        healthy = serving and upstream is not None
        return healthy, {
            "status": "ok" if healthy else "unavailable", "gateway": self.config.name, "serving": serving,
            "server": upstream.server if upstream else None, "on_primary": self.upstream.choice.on_primary,
            "relayed_agents": len(self.listener.relays()), "last_error": self.upstream.last_error,
            "last_heartbeat": self.last_heartbeat.isoformat() if self.last_heartbeat else None,
            "uptime_seconds": round(time.monotonic() - self._started, 1)}

    def _upstream_changed(self, upstream: Upstream | None) -> None:
        self.metrics.upstream_connected.clear()
        if upstream is not None:
            self.metrics.upstream_connects.inc()
            self.metrics.upstream_connected.labels(upstream.server).set(1)

    def _check_own_certificate(self) -> None:
        """Warn early; the servers decide (an imported gateway certificate carries no role a gateway could read)."""
        try:
            path, _key = self.config.tls.upstream_identity()
            certificate = load_certificate(path.read_bytes(), str(path))
            check_identity(certificate, Role.GATEWAY, self.config.name, self.config.group, str(path))
        except (CertificateError, OSError) as exc:
            log.error("the gateway's own certificate will not be accepted by the management servers: %s", exc)

    async def start(self) -> Endpoints:
        self._check_own_certificate()
        tls, listen = self.config.tls, self.config.listen
        self._grpc, agent_port = await open_listener(
            self.listener.handler(), address=listen.address, port=listen.port, key=tls.key,
            certificate=tls.certificate, ca_bundle=tls.ca_bundle)
        metrics_port = await self.health.start(self.config.metrics.address, self.config.metrics.port)
        self._tasks = [asyncio.create_task(self.upstream.run(self._stop), name="upstream"),
                       asyncio.create_task(self.revocations.watch(), name="revocation-watch"),
                       asyncio.create_task(self._heartbeats(), name="heartbeat")]
        log.info("gateway %s listening for agents on %s:%d, metrics on %d; servers %s", self.config.name,
                 listen.address, agent_port, metrics_port, ", ".join(self.config.servers))
        return Endpoints(agent_port, metrics_port)

    async def _heartbeats(self) -> None:
        while True:
            self.last_heartbeat = datetime.now(UTC)
            self.metrics.heartbeat.set(self.last_heartbeat.timestamp())
            await asyncio.sleep(self.config.heartbeat_seconds)

    async def stop(self, grace: float = 10.0) -> None:
        """Planned stop: relays say Goodbye upstream and drain their acks, then the listener closes."""
        self._stop.set()
        if self._tasks:  # the upstream task: it lets relays leave their server before anything closes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(self._tasks[0], return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._grpc is not None:
            await self._grpc.stop(1.0)
            self._grpc = None
        await self.health.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (SIGTERM), then leave every server with a Goodbye per agent stream."""
        await self.start()
        await stop.wait()
        log.info("stopping: agents' streams leave their servers with a Goodbye")
        await self.stop()
