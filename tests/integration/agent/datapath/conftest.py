"""Real `opsmgr agent` processes against real `opsmgr server` processes (the server tests' fixtures: real mTLS on
127.0.0.1, two real PostgreSQL servers). Tests generate data by writing into the agent's queue file from this
process, as any local producer may, and count rows in the server's databases."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from opsmgr.agent.lanes import ItemKind
from opsmgr.agent.queue import QueueStore
from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.server.conftest import (  # noqa: F401 - fixtures shared with the server's tests
    AGENTS,
    Pki,
    ServerProcess,
    make_server,
    pki,
    warehouse_dsn,
    warehouse_server,
)

TLS_NAME = "ms.opsmgr.svc"  # the shared Service name every management server's certificate carries
AGENT = AGENTS[0]
TABLES = {ItemKind.EVENT: "events", ItemKind.PERFORMANCE: "performance_samples", ItemKind.STATE: "state_changes",
          ItemKind.ALERT: "alerts", ItemKind.DISCOVERY: "discovered_objects"}
PREFIX = "gen:"


@dataclass
class AgentProcess:
    directory: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "agent.yaml"

    @property
    def log_path(self) -> Path:
        return self.directory / "agent.log"

    @property
    def queue_path(self) -> Path:
        return Path(self.config["queue"]["path"])

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as log:
            command = [sys.executable, "-m", "opsmgr", "agent", "--config", str(self.config_path)]
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()
            return -9

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            assert self.process is None or self.process.poll() is None, f"agent exited:\n{self.log()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"{text!r} x{count} not in the agent log within {timeout} s:\n{self.log()[-3000:]}")

    def enqueue(self, items: list[pb.Item]) -> None:
        """Generate data as a local producer does: straight into the agent's durable queue."""
        store = QueueStore(self.queue_path, int(self.config["queue"]["limit_bytes"]))
        try:
            for start in range(0, len(items), 2000):
                store.enqueue(items[start:start + 2000])
        finally:
            store.close()

    def queue_status(self) -> Any:
        store = QueueStore(self.queue_path, int(self.config["queue"]["limit_bytes"]))
        try:
            return store.status()
        finally:
            store.close()


def generated(kind: ItemKind, count: int, start: int = 0, padding: int = 0) -> list[pb.Item]:
    items = []
    for n in range(start, start + count):
        key = f"{PREFIX}{kind.label}:{n}"
        item = pb.Item()
        if kind is ItemKind.EVENT:
            item.event.object_key, item.event.channel, item.event.source = key, "syslog", "test"
            item.event.level, item.event.description = 4, "x" * padding
            item.event.logged_at.GetCurrentTime()
        elif kind is ItemKind.PERFORMANCE:
            item.performance.object_key, item.performance.object_name = key, "Processor"
            item.performance.counter_name, item.performance.value = "% Processor Time", float(n)
            item.performance.instance_name = "x" * padding
            item.performance.sampled_at.GetCurrentTime()
        elif kind is ItemKind.STATE:
            item.state.object_key, item.state.monitor, item.state.old_state, item.state.new_state = key, "m", 1, 2
            item.state.changed_at.GetCurrentTime()
        elif kind is ItemKind.ALERT:
            item.alert.object_key, item.alert.source, item.alert.name = key, "rule", "test alert"
            item.alert.severity, item.alert.description = 2, "x" * padding
            item.alert.raised_at.GetCurrentTime()
        else:
            item.discovery.object_key, item.discovery.class_name = key, "Linux.FileSystem"
            item.discovery.display_name = "/data"
            item.discovery.discovered_at.GetCurrentTime()
        items.append(item)
    return items


async def rows_by_kind(dsn: str, kinds: tuple[ItemKind, ...] = tuple(TABLES)) -> dict[ItemKind, tuple[int, int]]:
    """(rows, distinct object keys) of generated items per kind in one database."""
    conn = await asyncpg.connect(dsn)
    try:
        counts = {}
        for kind in kinds:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLES[kind]):
                continue
            row = await conn.fetchrow(f"SELECT count(*) AS n, count(DISTINCT object_key) AS k FROM {TABLES[kind]} "
                                      "WHERE object_key LIKE $1", f"{PREFIX}%")
            counts[kind] = (int(row["n"]), int(row["k"]))
        return counts
    finally:
        await conn.close()


@pytest.fixture
def make_agent(pki: Pki) -> Iterator[Callable[..., AgentProcess]]:  # noqa: F811
    made: list[AgentProcess] = []

    def build(primary: ServerProcess, failovers: tuple[ServerProcess, ...] = (), **overrides: Any) -> AgentProcess:
        directory = Path(tempfile.mkdtemp(prefix="opsmgr-agent-"))
        identity = directory / "identity"
        identity.mkdir(mode=0o700)
        credentials = pki.agent(AGENT)
        (identity / "tls.key").write_bytes(credentials.key_pem)
        (identity / "tls.crt").write_bytes(credentials.certificate_pem)
        (identity / "ca.crt").write_bytes(credentials.ca_pem)
        config: dict[str, Any] = {
            "fqdn": AGENT,
            "servers": {"primary": f"127.0.0.1:{primary.agent_port}",
                        "failover": [f"127.0.0.1:{s.agent_port}" for s in failovers], "tls_server_name": TLS_NAME},
            "certificates": {"directory": str(identity)},
            "queue": {"path": str(directory / "queue.sqlite"), "limit_bytes": 100 * 1024 * 1024,
                      "bulk_linger_seconds": 0.2},
            "connection": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0, "failback_seconds": 2.0,
                           "heartbeat_seconds": 1.0, "welcome_timeout_seconds": 5.0},
            "health": {"send_queue_check_seconds": 3600},
            "refuse_on_management_host": False,  # server and agent share this machine in tests
        }
        for section, values in overrides.items():
            config[section] = {**config[section], **values} if isinstance(values, dict) else values
        agent = AgentProcess(directory, config)
        made.append(agent)
        return agent

    yield build
    for agent in made:
        agent.stop()
        shutil.rmtree(agent.directory, ignore_errors=True)
