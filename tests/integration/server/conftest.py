"""A real `opsmgr server` process over real mTLS on 127.0.0.1, with two independent PostgreSQL servers.

The warehouse has a PostgreSQL server of its own, so a test can SIGSTOP it without touching the operational DB.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import yaml
from cryptography import x509

from opsmgr.dev.postgres import LocalPostgres, free_port
from opsmgr.pki import (
    Approval,
    CertificateAuthority,
    Identity,
    ManagementServerNames,
    RevocationReason,
    RevocationSet,
    Role,
    create_ca,
    issue_with_new_key,
)
from opsmgr.pki.pem import certificate_pem
from tests.conftest import scratch_database
from tests.integration.server.client import Credentials

GROUP = "contoso"
SERVER_NAMES = ManagementServerNames(group=GROUP, namespace="opsmgr", statefulset="ms", headless_service="ms-hl",
                                     shared_service="ms", replica=0)
AGENTS = ("web01.contoso.test", "web02.contoso.test", "db01.contoso.test", "relayed01.contoso.test")
GATEWAY = "gw01.dmz.contoso.test"


@dataclass
class Pki:
    ca: CertificateAuthority
    directory: Path

    def issue(self, role: Role, name: str, **kwargs: Any) -> Credentials:
        now = datetime.now(UTC)
        identity = Identity.of(GROUP, role, name)
        issued = issue_with_new_key(self.ca, Approval(identity, "test", now), now, **kwargs)
        return Credentials(issued.key_pem(), issued.certificate_pem(), self.ca.certificate_pem())

    def agent(self, name: str = AGENTS[0]) -> Credentials:
        return self.issue(Role.AGENT, name)


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-server-pki-"))
    ca = create_ca(GROUP, datetime.now(UTC))
    yield Pki(ca, directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def warehouse_server() -> Iterator[LocalPostgres]:
    """A second PostgreSQL server, so SIGSTOP freezes the warehouse alone."""
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-pg-wh-"))
    server = LocalPostgres(directory)
    server.start()
    try:
        yield server
    finally:
        resume(server)
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def postgres_processes(server: LocalPostgres) -> list[psutil.Process]:
    """The postmaster and every backend: stopping only the postmaster would leave open connections served."""
    assert server.pid is not None
    postmaster = psutil.Process(server.pid)
    return [postmaster, *postmaster.children(recursive=True)]


def freeze(server: LocalPostgres) -> None:
    for process in postgres_processes(server):
        process.send_signal(signal.SIGSTOP)


def crash(server: LocalPostgres) -> None:
    """SIGQUIT, PostgreSQL's immediate shutdown: no checkpoint, every session cut, crash recovery from the WAL on
    the next start; returns once the postmaster is gone."""
    assert server.pid is not None
    postmaster = psutil.Process(server.pid)
    postmaster.send_signal(signal.SIGQUIT)
    postmaster.wait(30)


def resume(server: LocalPostgres) -> None:
    if server.pid is None:
        return
    for process in postgres_processes(server):
        process.send_signal(signal.SIGCONT)


@pytest.fixture
async def warehouse_dsn(warehouse_server: LocalPostgres) -> AsyncIterator[str]:
    resume(warehouse_server)  # a failed test may have left it frozen
    async with scratch_database(warehouse_server, "wh") as dsn:
        try:
            yield dsn
        finally:
            resume(warehouse_server)


@dataclass
class ServerProcess:
    """One `opsmgr server --config FILE` subprocess (or another `role`: the gateway's tests run `opsmgr gateway`
    with it), restartable on the same ports and files."""

    directory: Path
    config: dict[str, Any]
    agent_port: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    revocations: RevocationSet = field(default_factory=RevocationSet)
    env: dict[str, str] = field(default_factory=dict)
    role: str = "server"

    @property
    def config_path(self) -> Path:
        return self.directory / f"{self.role}.yaml"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.role}.log"

    def start(self, timeout: float = 60) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "opsmgr", self.role, "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.role} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthz() is not None:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the {self.role} did not answer /healthz within {timeout} s:\n{self.log_tail()}")

    def healthz(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2) as reply:
                return dict(json.loads(reply.read()))
        except OSError as exc:
            body = getattr(exc, "read", None)
            return dict(json.loads(body())) if callable(body) and getattr(exc, "code", None) == 503 else None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int:
        assert self.process is not None
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def revoke(self, credentials: Credentials) -> None:
        certificate = x509.load_pem_x509_certificate(credentials.certificate_pem)
        self.revocations = self.revocations.revoke(certificate, RevocationReason.KEY_COMPROMISE, datetime.now(UTC),
                                                   certificate.subject.rfc4514_string())
        path = Path(self.config["revocations"]["file"])
        staging = path.with_suffix(".new")
        staging.write_text(yaml.safe_dump({"revocations": self.revocations.to_records()}))
        staging.replace(path)  # atomic, as a Secret's projected file changes

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def log_tail(self, count: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-count:])
        except OSError:
            return "(no log)"


def write_directory(path: Path, *, approved: tuple[str, ...] = AGENTS, pending: tuple[str, ...] = (),
                    relayed: tuple[str, ...] = (AGENTS[3],)) -> None:
    agents = [{"fqdn": name, "approval": "Approved", **({"gateway": GATEWAY} if name in relayed else {})}
              for name in approved]
    agents += [{"fqdn": name, "approval": "Pending"} for name in pending]
    path.write_text(yaml.safe_dump({"agents": agents, "gateways": [{"fqdn": GATEWAY}]}))


MakeServer = Callable[..., ServerProcess]


@pytest.fixture
def make_server(pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> Iterator[MakeServer]:
    """Builds (not starts) a ServerProcess with its certificate, CA bundle, directory and revocation files."""
    made: list[ServerProcess] = []

    def build(**ingest: Any) -> ServerProcess:
        directory = Path(tempfile.mkdtemp(prefix="opsmgr-server-"))
        issued = issue_with_new_key(pki.ca, Approval(SERVER_NAMES.identity(), "test", datetime.now(UTC)),
                                    datetime.now(UTC), dns_names=SERVER_NAMES.dns_names())
        (directory / "tls.crt").write_bytes(issued.certificate_pem())
        (directory / "tls.key").write_bytes(issued.key_pem())
        (directory / "ca.crt").write_bytes(certificate_pem(pki.ca.certificate))
        (directory / "revocations.yaml").write_text("revocations: []\n")
        write_directory(directory / "directory.yaml")
        agent_port, metrics_port = free_port(), free_port()
        config = {
            "group": GROUP, "name": SERVER_NAMES.identity().name,
            "listen": {"address": "127.0.0.1", "port": agent_port},
            "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt"},
            "databases": {"operational_dsn": postgres_dsn, "warehouse_dsn": warehouse_dsn},
            "metrics": {"address": "127.0.0.1", "port": metrics_port},
            "revocations": {"file": str(directory / "revocations.yaml"), "poll_seconds": 0.5},
            "directory": {"file": str(directory / "directory.yaml"), "poll_seconds": 0.5},
            "ingest": {"alert_sync_seconds": 1.0, **ingest},
        }
        server = ServerProcess(directory, config, agent_port, metrics_port)
        made.append(server)
        return server

    yield build
    for server in made:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def running_server(make_server: MakeServer) -> ServerProcess:
    server = make_server()
    server.start()
    return server


async def count_rows(dsn: str) -> dict[str, tuple[int, int]]:
    """(rows, distinct keys) per item kind in one database."""
    tables = {"event": "events", "performance": "performance_samples", "state": "state_changes",
              "alert": "alerts", "discovery": "discovered_objects"}
    conn = await asyncpg.connect(dsn)
    try:
        counts = {}
        for kind, table in tables.items():
            present = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            if not present:
                continue
            row = await conn.fetchrow(f"SELECT count(*) AS n, count(DISTINCT object_key) AS k FROM {table}")
            counts[kind] = (int(row["n"]), int(row["k"]))
        return counts
    finally:
        await conn.close()


OPERATIONAL_KINDS = ("event", "performance", "state", "alert", "discovery")
WAREHOUSE_KINDS = ("event", "performance", "state", "alert")  # alerts by the server's periodic sync


async def alerts_synced(dsn: str, expected: int, polls: int = 150) -> None:
    """Wait (up to polls x 0.2 s) until the server's alert sync copied `expected` alerts to the warehouse."""
    for _ in range(polls):
        if (await count_rows(dsn)).get("alert", (0, 0))[0] >= expected:
            return
        await asyncio.sleep(0.2)


async def assert_exactly_once(generated: dict[str, set[str]], operational_dsn: str, warehouse_dsn: str) -> None:
    expected = {kind: (len(keys), len(keys)) for kind, keys in generated.items()}
    operational = await count_rows(operational_dsn)
    assert {kind: operational[kind] for kind in OPERATIONAL_KINDS} == expected
    await alerts_synced(warehouse_dsn, len(generated["alert"]))
    warehouse = await count_rows(warehouse_dsn)
    assert {kind: warehouse[kind] for kind in WAREHOUSE_KINDS} == {kind: expected[kind] for kind in WAREHOUSE_KINDS}
    assert "discovery" not in warehouse, "discovery belongs to the operational DB alone"
