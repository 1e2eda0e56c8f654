"""The agent's heartbeats keep going out while its queue's thread is held up (here by a local producer holding
SQLite's write lock; during a replay, by sealing batches and fsynced acks): a server must not find it silent.

The agent's data path runs in this process (`DiskQueue`, `ServerConnection`), against a real server over mTLS."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opsmgr.agent.connection import AgentFacts, ConnectionSettings, ServerConnection
from opsmgr.agent.identity import IdentityFiles
from opsmgr.agent.queue import DiskQueue
from opsmgr.pki.names import CA_FILE, CERTIFICATE_FILE, KEY_FILE
from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.agent.datapath.conftest import AGENT
from tests.integration.server.client import TARGET_NAME
from tests.integration.server.conftest import MakeServer, Pki, ServerProcess
from tests.integration.server.test_heartbeats import heartbeats_recorded


@pytest.fixture
async def agent_home() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="opsmgr-agent-beats-") as folder:
        yield Path(folder)


def identity_files(folder: Path, pki: Pki) -> IdentityFiles:
    credentials = pki.agent(AGENT)
    folder.mkdir()
    (folder / KEY_FILE).write_bytes(credentials.key_pem)
    (folder / CERTIFICATE_FILE).write_bytes(credentials.certificate_pem)
    (folder / CA_FILE).write_bytes(credentials.ca_pem)
    return IdentityFiles(folder)


async def test_heartbeats_go_out_while_the_queue_thread_waits_for_a_local_producers_write_lock(
        make_server: MakeServer, pki: Pki, agent_home: Path) -> None:
    server: ServerProcess = make_server()
    server.start()
    queue = await DiskQueue.open(agent_home / "queue.sqlite")
    settings = ConnectionSettings(primary=f"127.0.0.1:{server.agent_port}", tls_server_name=TARGET_NAME,
                                  renew=False, heartbeat_seconds=0.2)
    connection = ServerConnection(settings, AgentFacts(AGENT), queue, identity_files(agent_home / "identity", pki))
    stop = asyncio.Event()
    running = asyncio.create_task(connection.run(stop))
    producer = sqlite3.connect(agent_home / "queue.sqlite", isolation_level=None)
    try:
        await heartbeats_recorded(server, 1)
        producer.execute("BEGIN IMMEDIATE")  # another local process, in the middle of its enqueue
        # Our own enqueue now holds the queue's thread until the lock goes (or its 10 s busy timeout ends).
        blocked = asyncio.create_task(queue.enqueue([pb.Item(event=pb.Event(object_key="k", description="d"))]))
        before = connection.state.heartbeats_sent
        await heartbeats_recorded(server, before + 3)
        assert not blocked.done(), "the heartbeats were sent while the queue's thread was still held up"
        producer.execute("COMMIT")
        await blocked
    finally:
        producer.close()
        stop.set()
        await running
        await queue.close()
