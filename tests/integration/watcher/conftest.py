"""Management servers as processes against the session's real API server and real PostgreSQL, authenticated as the
ServiceAccount with the Role the operator renders for them, and test agents that heartbeat over real mTLS.

Intervals are shortened: heartbeat every 1 s, 3 missed raise the alert, Leases of 3 s renewed every 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from opsmgr.api import RESOURCES, ManagementGroup
from opsmgr.api.crd import crd_stream
from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import free_port
from opsmgr.kubeio.client import open_api_client
from opsmgr.kubeio.kube import Kube, Ref
from opsmgr.operator.render import render_server_access
from opsmgr.pki import Approval, ManagementServerNames, issue_with_new_key
from opsmgr.pki.pem import certificate_pem
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.rendezvous import rank
from tests.integration.server.client import AgentStream, Credentials, channel
from tests.integration.server.conftest import (  # noqa: F401  (fixtures)
    GROUP,
    Pki,
    ServerProcess,
    pki,
    warehouse_dsn,
    warehouse_server,
)

INTERVAL = 1
THRESHOLD = 3
WINDOW = INTERVAL * THRESHOLD
LEASE_SECONDS = 3.0


def server_names(replica: int) -> ManagementServerNames:
    return ManagementServerNames(group=GROUP, namespace="opsmgr", statefulset="ms", headless_service="ms-hl",
                                 shared_service="ms", replica=replica)


def server_kubeconfig(cluster: LocalCluster, namespace: str, account: str, directory: Path) -> Path:
    """A kubeconfig that authenticates as the servers' ServiceAccount (a TokenRequest token)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    document = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}],
                "current-context": account}
    path = directory / "server.kubeconfig"
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


@dataclass
class Fleet:
    """Up to three servers of one group in one namespace, sharing one operational DB."""

    cluster: LocalCluster
    namespace: str
    pki: Pki
    operational_dsn: str
    warehouse_dsn: str
    directory: Path
    kubeconfig: Path
    servers: list[ServerProcess] = field(default_factory=list)
    threshold: int = THRESHOLD

    def build(self, replica: int) -> ServerProcess:
        names = server_names(replica)
        folder = self.directory / names.pod_name
        folder.mkdir()
        issued = issue_with_new_key(self.pki.ca, Approval(names.identity(), "test", datetime.now(UTC)),
                                    datetime.now(UTC), dns_names=names.dns_names())
        (folder / "tls.crt").write_bytes(issued.certificate_pem())
        (folder / "tls.key").write_bytes(issued.key_pem())
        (folder / "ca.crt").write_bytes(certificate_pem(self.pki.ca.certificate))
        (folder / "revocations.yaml").write_text("revocations: []\n")
        (folder / "directory.yaml").write_text("agents: []\ngateways: []\n")
        agent_port, metrics_port = free_port(), free_port()
        config = {
            "group": GROUP, "name": names.identity().name,
            "listen": {"address": "127.0.0.1", "port": agent_port},
            "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt"},
            "databases": {"operational_dsn": self.operational_dsn, "warehouse_dsn": self.warehouse_dsn},
            "metrics": {"address": "127.0.0.1", "port": metrics_port},
            "revocations": {"file": str(folder / "revocations.yaml"), "poll_seconds": 0.5},
            "directory": {"file": str(folder / "directory.yaml"), "poll_seconds": 0.5},
            "heartbeat_interval_seconds": INTERVAL,
            "watcher": {"missed_threshold": self.threshold, "presence_flush_seconds": 0.5,
                        "status_heartbeat_seconds": 5, "probe_timeout_seconds": 1},
            "kubernetes": {"namespace": self.namespace, "member": names.pod_name, "kubeconfig": str(self.kubeconfig),
                           "lease_seconds": LEASE_SECONDS, "renew_seconds": 0.5},
            "enrollment": {"enabled": False},
        }
        server = ServerProcess(folder, config, agent_port, metrics_port)
        self.servers.append(server)
        return server

    def start(self, count: int) -> list[ServerProcess]:
        built = [self.build(replica) for replica in range(count)]
        for server in built:
            server.start()
        return built

    @property
    def members(self) -> list[str]:
        return [str(s.config["kubernetes"]["member"]) for s in self.servers]

    def by_member(self, member: str) -> ServerProcess:
        return next(s for s in self.servers if s.config["kubernetes"]["member"] == member)

    def primary_of(self, agent_name: str, among: Sequence[ServerProcess] | None = None) -> ServerProcess:
        candidates = list(among or self.servers)
        first = rank(agent_name, [str(s.config["kubernetes"]["member"]) for s in candidates])[0]
        return self.by_member(first)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
async def kube(kube_cluster: LocalCluster) -> AsyncIterator[Kube]:
    """The test's own admin door to the API server (creating Agents and setting their approval)."""
    api = await open_api_client(kube_cluster.kubeconfig, pool_size=32)
    try:
        yield Kube(api, field_manager="opsmgr-test")
    finally:
        await api.close()


@pytest.fixture
async def fleet(kube_cluster: LocalCluster, namespace: str, pki: Pki, postgres_dsn: str,  # noqa: F811
                warehouse_dsn: str) -> AsyncIterator[Fleet]:  # noqa: F811
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_stream(RESOURCES))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *[f"crd/{r.crd_name()}" for r in RESOURCES])
    group = ManagementGroup.from_body({"metadata": {"name": GROUP, "namespace": namespace, "uid": "0"}})
    access = render_server_access(group)
    for manifest in access:
        manifest["metadata"].pop("ownerReferences", None)
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(access))
    account = access[0]["metadata"]["name"]
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-fleet-"))
    made = Fleet(kube_cluster, namespace, pki, postgres_dsn, warehouse_dsn, directory,
                 server_kubeconfig(kube_cluster, namespace, account, directory))
    try:
        yield made
    finally:
        made.stop()
        if not os.environ.get("OPSMGR_KEEP_LOGS"):
            shutil.rmtree(directory, ignore_errors=True)


async def create_agents(kube: Kube, namespace: str, names: Sequence[str], *, probe: dict[str, Any] | None = None,
                        placement: str = "Host") -> None:
    """Agents of the group, Approved (as the operator would write it)."""
    semaphore = asyncio.Semaphore(16)

    async def one(name: str) -> None:
        async with semaphore:
            spec: dict[str, Any] = {"managementGroupRef": {"name": GROUP}, "fqdn": fqdn(name),
                                    "placement": placement}
            if probe is not None:
                spec["probe"] = probe
            await kube.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "Agent",
                               "metadata": {"name": name, "namespace": namespace}, "spec": spec})
            await kube.merge_patch(Ref("opsmgr.io/v1alpha1", "Agent", namespace, name),
                                   {"status": {"approval": "Approved"}}, subresource="status")

    await asyncio.gather(*(one(name) for name in names))


def fqdn(name: str) -> str:
    return f"{name}.contoso.test"


class HeartbeatingAgent:
    """A test agent: Hello, then a heartbeat every interval; after a lost stream it dials the next server at once.

    `silence()` stops it without a Goodbye (the process died); `goodbye()` stops it the planned way.
    """

    def __init__(self, name: str, credentials: Credentials, servers: Callable[[], list[ServerProcess]]) -> None:
        self.name = name
        self.credentials = credentials
        self.servers = servers
        self.connected_to: ServerProcess | None = None
        self.beats = 0
        self.reconnects = 0
        self.timeline: list[tuple[float, str]] = []  # (time.time(), what happened), for a failure to explain itself
        self._task: asyncio.Task[None] | None = None
        self._goodbye = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"agent-{self.name}")

    async def _run(self) -> None:
        attempt = 0
        while True:
            servers = self.servers()
            server = servers[attempt % len(servers)]
            try:
                await self._session(server)
            except (OSError, TimeoutError) as exc:
                self.timeline.append((time.time(), f"{_member(server)}: {type(exc).__name__} {exc}"))
            except asyncio.InvalidStateError as exc:
                # The server ended the call between our last look at it and this heartbeat's write: a lost stream.
                self.timeline.append((time.time(), f"{_member(server)}: write after the call ended ({exc})"))
            except Exception as exc:  # grpc errors end a session like a broken socket
                if type(exc).__name__ not in ("AioRpcError", "UsageError", "ExecuteBatchError"):
                    raise
                self.timeline.append((time.time(), f"{_member(server)}: {str(exc).splitlines()[0][:160]}"))
            self.connected_to = None
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(0.1)

    async def _session(self, server: ServerProcess) -> None:
        async with channel(server.agent_port, self.credentials) as chan:
            stream = AgentStream(chan)
            # A server that is shutting down may take the connection and never answer: move on quickly.
            async with asyncio.timeout(2):
                await stream.hello(fqdn(self.name))
            self.connected_to = server
            self.timeline.append((time.time(), f"{_member(server)}: Hello answered"))
            reader = asyncio.create_task(self._drain(stream))
            try:
                seq = 0
                while not reader.done():
                    seq += 1
                    await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=seq)))
                    self.beats += 1
                    if self._goodbye:
                        await stream.send(pb.AgentMessage(goodbye=pb.Goodbye(reason="test stop")))
                        await asyncio.sleep(0.5)
                        raise asyncio.CancelledError
                    await asyncio.sleep(INTERVAL)
                reader.result()
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    @staticmethod
    async def _drain(stream: AgentStream) -> None:
        while await stream.receive(within=3600) is not None:
            pass

    @property
    def connected(self) -> bool:
        """Holding a stream now; a test agent that crashed raises here, so a test never waits on a dead one."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()
        return self.connected_to is not None

    async def silence(self) -> None:
        """Stop like a killed process: the socket closes, no Goodbye."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._task = None

    async def goodbye(self) -> None:
        self._goodbye = True
        if self._task is not None:
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(5):
                    await self._task
        self._task = None


def _member(server: ServerProcess) -> str:
    return str(server.config["kubernetes"]["member"])


def explain(agent: HeartbeatingAgent, servers: Sequence[ServerProcess], since: float) -> str:
    """What the agent and every server said about it since `since`: the story behind an unexpected alert."""
    lines = [f"  {datetime.fromtimestamp(t, UTC):%H:%M:%S.%f} agent  {what}" for t, what in agent.timeline
             if t >= since]
    start = f"{datetime.fromtimestamp(since, UTC):%Y-%m-%dT%H:%M:%S}"
    for server in servers:
        for record in server.log_lines():
            if fqdn(agent.name) in json.dumps(record) and str(record.get("time", "")) >= start:
                rest = {k: v for k, v in record.items() if k not in ("time", "level", "logger", "msg")}
                lines.append(f"  {str(record['time'])[11:23]}    {_member(server)} {record.get('msg')} {rest}")
    return "\n".join(sorted(lines))


async def watcher_alerts(dsn: str, agent: str | None = None) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(
            """SELECT agent, name, source, resolution_state, repeat_count, raised_at, resolved_at FROM alerts
               WHERE source LIKE 'opsmgr.watcher.%' AND ($1::text IS NULL OR agent = $1) ORDER BY raised_at""",
            agent))
    finally:
        await conn.close()


async def until(predicate: Callable[[], Any], within: float, what: str, step: float = 0.2) -> Any:
    """Poll an (async or plain) predicate until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        await asyncio.sleep(step)


@pytest.fixture
def agent_credentials(pki: Pki) -> Iterator[Callable[[str], Credentials]]:  # noqa: F811
    yield lambda name: pki.agent(fqdn(name))


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
