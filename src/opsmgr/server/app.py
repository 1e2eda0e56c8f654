"""The management server process: listener on 5723, one ingest pipeline per database, watches and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from grpc import aio

from opsmgr.db.alert_sync import sync_alerts_to_warehouse
from opsmgr.db.cli import redact_dsn
from opsmgr.db.model import Database, Retention
from opsmgr.kubeio.kube import KubeError
from opsmgr.pki.revocation_watch import RevocationWatch
from opsmgr.protocol.transport import grpc_options, server_credentials
from opsmgr.server.channel import AgentChannel
from opsmgr.server.cluster import ClusterLink, member_name
from opsmgr.server.config import ServerConfig
from opsmgr.server.directory import AgentDirectory, FileAgentDirectory
from opsmgr.server.duties import GroupDuties
from opsmgr.server.enrollment_cluster import EnrollmentCluster
from opsmgr.server.enrollment_endpoint import EnrollmentEndpoint
from opsmgr.server.ingest import BatchParking, DatabaseLink, IngestPipeline
from opsmgr.server.kube_watch import KubeAgentDirectory
from opsmgr.server.metrics import HealthEndpoint, ServerMetrics
from opsmgr.server.presence import PresenceLedger
from opsmgr.server.renewal import CertificateRenewal
from opsmgr.server.session import SessionSettings
from opsmgr.server.watcher_service import WatcherService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    agent_port: int
    metrics_port: int
    enrollment_port: int | None = None  # None: enrollment off (no Kubernetes access)


class ManagementServer:
    """Everything one `opsmgr server` runs; `directory` may be any AgentDirectory (the file one by default)."""

    def __init__(self, config: ServerConfig, *, directory: AgentDirectory | None = None,
                 retention: Retention | None = None) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.presence = PresenceLedger()
        self.revocations = RevocationWatch(config.revocations.file, config.revocations.poll_seconds)
        self.file_directory = None if directory is not None else FileAgentDirectory(
            config.directory.file, config.directory.poll_seconds)
        self.directory: AgentDirectory = directory or self.file_directory  # type: ignore[assignment]
        # With Kubernetes access the Agents answer for agents (the file still names gateways).
        self.kube_directory = KubeAgentDirectory(None, self.directory) if config.kubernetes is not None else None
        if self.kube_directory is not None:
            self.directory = self.kube_directory
        retention = retention or Retention()
        ingest, databases = config.ingest, config.databases
        self.links = {database: DatabaseLink(database, dsn, pool_size=databases.pool_size,
                                             connect_timeout=databases.connect_timeout_seconds, retention=retention,
                                             writers=ingest.writers_per_database)
                      for database, dsn in ((Database.OPERATIONAL, databases.operational_dsn),
                                            (Database.WAREHOUSE, databases.warehouse_dsn))}
        capacity = {Database.OPERATIONAL: ingest.operational_queue_items,
                    Database.WAREHOUSE: ingest.warehouse_queue_items}
        self.pipelines = {database: IngestPipeline(link, self.metrics, capacity_items=capacity[database],
                                                   writers=ingest.writers_per_database,
                                                   batches_per_transaction=ingest.batches_per_transaction,
                                                   stall_seconds=ingest.stall_seconds)
                          for database, link in self.links.items()}
        self.channel = AgentChannel(
            group=config.group, pipelines=self.pipelines,
            parking=BatchParking(ingest.parked_batch_bytes, self.metrics), metrics=self.metrics,
            presence=self.presence, directory=self.directory, revocations=self.revocations,
            settings=SessionSettings(server_name=config.name,
                                     heartbeat_interval_seconds=config.heartbeat_interval_seconds,
                                     inflight_batches=ingest.session_inflight_batches,
                                     deferred_retry_ms=ingest.deferred_retry_ms))
        if self.file_directory is not None:
            self.file_directory.on_change(self.channel.recheck_directory)
        self.health = HealthEndpoint(self.metrics, self.healthz)
        watcher = config.watcher
        self.watcher = WatcherService(
            member=member_name(config), presence=self.presence, pool=self.links[Database.OPERATIONAL].pool,
            interval=float(config.heartbeat_interval_seconds), threshold=watcher.missed_threshold,
            flush_seconds=watcher.presence_flush_seconds, probe_timeout=watcher.probe_timeout_seconds)
        self.pipelines[Database.OPERATIONAL].on_committed.append(self.watcher.batch_committed)
        duties = config.duties
        self.duties = GroupDuties(group=config.group, links=self.links, alert_seconds=duties.alert_seconds,
                                  aggregation_minute=duties.aggregation_minute,
                                  groom_seconds=config.ingest.partition_maintenance_seconds,
                                  group_refresh_seconds=duties.group_refresh_seconds, console_url=duties.console_url)
        self.cluster: ClusterLink | None = None
        self.enrollment = EnrollmentEndpoint.of(config)
        self._grpc: aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher_task: asyncio.Task[None] | None = None

    def healthz(self) -> tuple[bool, dict[str, object]]:
        """Healthy while serving and the operational DB takes writes; a stalled warehouse is reported, not fatal."""
        databases = {db.value: "stalled" if pipeline.stalled() else "ok" for db, pipeline in self.pipelines.items()}
        serving = self._grpc is not None
        healthy = serving and databases[Database.OPERATIONAL.value] == "ok"
        return healthy, {"status": "ok" if healthy else "unavailable", "serving": serving, "databases": databases,
                         "connected_agents": len(self.channel.by_agent), "watched_agents": len(self.watcher.watcher),
                         "alerts_raised": self.watcher.raised, "alerts_resolved": self.watcher.resolved,
                         "duty_passes": dict(self.duties.passes)}

    async def start(self) -> Endpoints:
        tls = self.config.tls
        # The operational DB must be there before agents are admitted; the warehouse may come later.
        await self._until_ready(self.links[Database.OPERATIONAL])
        for pipeline in self.pipelines.values():
            pipeline.start()
        cluster_tasks: list[asyncio.Task[None]] = []
        if self.kube_directory is not None:
            # The group's Agents are listed before the agent port opens (bounded by the link's sync timeout), so a
            # freshly started server does not turn registered agents away while it is still reading who they are.
            self.cluster, cluster_tasks = await ClusterLink.open(self.config, self.watcher, self.kube_directory,
                                                                 self.channel.recheck_directory, self.channel)
            assert self.config.kubernetes is not None  # a Kubernetes directory comes only with Kubernetes access
            signer = EnrollmentCluster(self.cluster.kube, namespace=self.config.kubernetes.namespace,
                                       group=self.config.group, ca_secret=self.config.enrollment.ca_secret,
                                       server=self.config.name)
            self.channel.renewal = CertificateRenewal(signer, lambda: self.revocations.current)
        self._grpc = aio.server(options=grpc_options())
        self._grpc.add_generic_rpc_handlers([self.channel.handler()])
        credentials = server_credentials(*await asyncio.to_thread(
            lambda: (tls.key.read_bytes(), tls.certificate.read_bytes(), tls.ca_bundle.read_bytes())))
        listen = self.config.listen
        agent_port = self._grpc.add_secure_port(f"{listen.address}:{listen.port}", credentials)
        if agent_port == 0:
            raise OSError(f"cannot listen on {listen.address}:{listen.port} (listen.port): is it in use?")
        await self._grpc.start()
        enrollment_port = await self.enrollment.start() if self.enrollment is not None else None
        # /healthz last: once it answers, every port this server serves is listening.
        metrics_port = await self.health.start(self.config.metrics.address, self.config.metrics.port)
        self._tasks = [asyncio.create_task(self.revocations.watch(), name="revocation-watch"),
                       asyncio.create_task(self._every(self.config.ingest.alert_sync_seconds, self._sync_alerts),
                                           name="alert-sync")]
        if self.file_directory is not None:
            self._tasks.append(asyncio.create_task(self.file_directory.watch(), name="directory-watch"))
        self._tasks += cluster_tasks
        self._watcher_task = asyncio.create_task(self.watcher.run(), name="health-service-watcher")
        if self.cluster is not None:
            assert self.config.kubernetes is not None
            self.duties.kube, self.duties.namespace = self.cluster.kube, self.config.kubernetes.namespace
            with contextlib.suppress(KubeError, OSError, TimeoutError):
                await self.duties.refresh()  # the group's retention before the first grooming; retried if it fails
        self._tasks += self.duties.tasks()
        log.info("management server listening", extra={"fields": {
            "name": self.config.name, "group": self.config.group, "agent_port": agent_port,
            "metrics_port": metrics_port, "operational": redact_dsn(self.links[Database.OPERATIONAL].dsn),
            "warehouse": redact_dsn(self.links[Database.WAREHOUSE].dsn)}})
        return Endpoints(agent_port, metrics_port, enrollment_port)

    async def stop(self, grace: float = 5.0) -> None:
        self.watcher.closing()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.duties.close()
        if self._grpc is not None:
            # Stop taking new streams first, then end the open ones: the grace is only for writes in flight.
            stopped = asyncio.create_task(self._grpc.stop(grace))
            await asyncio.sleep(0)
            self.channel.stop()
            await stopped
            self._grpc = None
        # The watcher kept recording heartbeats while the streams drained; now their closes go out, at once.
        if self._watcher_task is not None:
            self._watcher_task.cancel()
            await asyncio.gather(self._watcher_task, return_exceptions=True)
        await self.watcher.stop()
        if self.cluster is not None:
            await self.cluster.close()
        await self.health.stop()
        if self.enrollment is not None:
            await self.enrollment.stop()
        await asyncio.gather(*(pipeline.stop() for pipeline in self.pipelines.values()))

    async def serve_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        await stop.wait()
        log.info("stopping: finishing open writes")
        await self.stop()

    async def _until_ready(self, link: DatabaseLink) -> None:
        delay = 0.5
        while True:
            try:
                await link.pool()
                return
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("database not ready, retrying", extra={"fields": {
                    "database": link.database.value, "dsn": redact_dsn(link.dsn), "error": str(exc),
                    "retry_seconds": delay}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _sync_alerts(self) -> None:
        operational = await self.links[Database.OPERATIONAL].pool()
        warehouse = await self.links[Database.WAREHOUSE].pool()
        async with operational.acquire() as source, warehouse.acquire() as target:
            result = await sync_alerts_to_warehouse(source, target)
        if result.copied:
            log.info("alerts synced to the warehouse", extra={"fields": {"copied": result.copied}})

    @staticmethod
    async def _every(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await action()
