"""Collection end to end: a real agent process (data path + collection) against a real `opsmgr server` and real
PostgreSQL: performance and discovery rows, log events, and a monitor's alert raised and auto-resolved."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.integration.agent.datapath.conftest import AgentProcess, make_agent  # noqa: F401 - fixture
from tests.integration.server.conftest import (  # noqa: F401 - fixtures shared with the server's tests
    ServerProcess,
    make_server,
    pki,
    warehouse_dsn,
    warehouse_server,
)

HERE = Path(__file__).parent
AGENT = "web01.contoso.test"
COMPUTER = f"Linux.Computer:{AGENT}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def packs(log_file: Path, port: int) -> list[dict[str, Any]]:
    return [{"metadata": {"name": "e2e"}, "spec": {
        "managementGroupRef": {"name": "production"}, "version": "1.0.0",
        "rules": [
            {"name": "memory-used", "performance": {"object": "Memory", "counter": "% Used Memory",
                                                    "intervalSeconds": 10}},
            {"name": "app-errors", "event": {"logFile": str(log_file), "pattern": "ERROR", "level": "Error",
                                             "eventId": 500}},
        ],
        "monitors": [
            {"name": "db-port", "displayName": "Database port reachable",
             "performance": {"object": "TCP Port", "counter": "Available", "instance": f"127.0.0.1:{port}",
                             "intervalSeconds": 10},
             "direction": "Below", "criticalThreshold": 0.5, "alertOn": "Critical", "alertPriority": "High"},
        ],
    }}]


class CollectingAgent:
    def __init__(self, agent: AgentProcess, settings: dict[str, Any], packs_file: Path) -> None:
        self.agent = agent
        self.settings_path = agent.directory / "collection.yaml"
        self.settings = settings
        self.packs_file = packs_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.agent.config_path.write_text(yaml.safe_dump(self.agent.config))
        self.settings_path.write_text(yaml.safe_dump(self.settings))
        with self.agent.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "agent_with_collection.py"), str(self.agent.config_path),
                 str(self.settings_path), str(self.packs_file)], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.agent.process = self.process  # so the fixture stops it


async def poll(query: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], within: float, what: str,
               log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + within
    value = None
    while time.monotonic() < deadline:
        value = await query()
        if done(value):
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: last {value!r}\nagent log:\n{log()[-3000:]}")


@pytest.fixture
def listener_port() -> Iterator[int]:
    yield free_port()


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as out:
        out.writelines(f"{line}\n" for line in lines)


async def test_collection_reaches_the_databases_and_a_monitor_alert_resolves_itself(
        make_server: Callable[..., ServerProcess], make_agent: Callable[..., AgentProcess],  # noqa: F811
        tmp_path: Path, listener_port: int) -> None:
    server = make_server()
    server.start()
    log_file = tmp_path / "app.log"
    await asyncio.to_thread(append, log_file, "ERROR from before the agent started")
    packs_file = tmp_path / "packs.json"
    await asyncio.to_thread(packs_file.write_text, json.dumps(packs(log_file, listener_port)))
    agent = CollectingAgent(make_agent(server), {"state_directory": str(tmp_path / "state"),
                                                 "log_poll_seconds": 0.2}, packs_file)
    agent.start()
    agent.agent.wait_for_log("connected to")
    dsn = server.config["databases"]["operational_dsn"]
    conn = await asyncpg.connect(dsn)
    try:
        async def fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
            return list(await conn.fetch(sql, *args))

        discovered = await poll(lambda: fetch("SELECT object_key, class_name, properties FROM discovered_objects "
                                              "WHERE agent = $1", AGENT),
                                lambda rows: any(r["object_key"] == COMPUTER for r in rows), 30, "discovery rows",
                                agent.agent.log)
        classes = {r["class_name"] for r in discovered}
        assert {"Linux.Computer", "Linux.Processor", "Linux.FileSystem"} <= classes

        # The port is closed: the first sample makes the monitor Critical and raises its alert.
        alerts = await poll(lambda: fetch("SELECT source, name, severity, priority, resolution_state FROM alerts "
                                          "WHERE agent = $1 AND source = 'db-port'", AGENT),
                            lambda rows: len(rows) == 1, 40, "alert raised", agent.agent.log)
        assert [tuple(r) for r in alerts] == [("db-port", "Database port reachable", 2, 2, 0)]

        await asyncio.to_thread(append, log_file, "INFO fine", "ERROR disk on fire", "ERROR second")
        events = await poll(lambda: fetch("SELECT description, number, level, source FROM events WHERE agent = $1 "
                                          "AND source = 'app-errors' ORDER BY logged_at, description", AGENT),
                            lambda rows: len(rows) >= 2, 30, "log events", agent.agent.log)
        assert sorted(r["description"] for r in events) == ["ERROR disk on fire", "ERROR second"]
        assert {(r["number"], r["level"]) for r in events} == {(500, 2)}

        # The port opens: the next sample makes it Healthy, and the alert resolves itself (254).
        listener = socket.create_server(("127.0.0.1", listener_port))
        try:
            resolved = await poll(lambda: fetch("SELECT resolution_state, resolved_at FROM alerts WHERE agent = $1 "
                                                "AND source = 'db-port'", AGENT),
                                  lambda rows: len(rows) == 1 and rows[0]["resolution_state"] == 254, 40,
                                  "alert resolved", agent.agent.log)
            assert resolved[0]["resolved_at"] is not None
        finally:
            listener.close()

        states = await fetch("SELECT old_state, new_state FROM state_changes WHERE agent = $1 AND monitor = 'db-port' "
                             "ORDER BY changed_at", AGENT)
        assert [tuple(r) for r in states] == [(0, 3), (3, 1)]
        samples = await poll(lambda: fetch("SELECT object_key, value FROM performance_samples WHERE agent = $1 AND "
                                           "counter_name = '% Used Memory'", AGENT),
                             lambda rows: len(rows) >= 1, 30, "performance rows", agent.agent.log)
        assert all(r["object_key"] == COMPUTER and 0 < r["value"] < 100 for r in samples)
    finally:
        await conn.close()
    assert agent.agent.stop() == 0
