"""The Agent's health in `kubectl get agents`, written by a real management server from the state changes a
monitoring agent sends: Critical when its monitor goes Critical, Healthy when it recovers, still right after the
server restarts (read back from the operational DB), and Unknown while its heartbeats are lost.

Heartbeat every 1 s, 3 missed make the heartbeat a Failure (see conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from opsmgr.dev.cluster import LocalCluster
from opsmgr.kubeio.kube import Kube, Ref
from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.server.client import OPERATIONAL, SETTLED, AgentStream, Credentials, channel, stamp
from tests.integration.server.conftest import ServerProcess
from tests.integration.watcher.conftest import (
    INTERVAL,
    WINDOW,
    Fleet,
    HeartbeatingAgent,
    create_agents,
    fqdn,
    until,
)

pytestmark = pytest.mark.timeout(300)
OBJECT = "Linux.LogicalDisk:/var"
MONITOR = "Linux.DiskSpace"
HEALTHY, CRITICAL = 1, 3


class MonitoringAgent(HeartbeatingAgent):
    """A test agent whose monitor reports state changes: each goes out in a priority batch beside the heartbeats
    and stays queued until the operational DB acknowledged it, replayed on the next stream if the stream broke."""

    def __init__(self, name: str, credentials: Credentials, servers: Callable[[], list[ServerProcess]]) -> None:
        super().__init__(name, credentials, servers)
        self.epoch = str(uuid.uuid4())
        self.seq = 0
        self.unacked: dict[int, pb.DataBatch] = {}

    def monitor_changed(self, old: int, new: int) -> None:
        item = pb.Item(state=pb.StateChange(changed_at=stamp(datetime.now(UTC)), object_key=OBJECT, monitor=MONITOR,
                                            old_state=old, new_state=new))
        self.unacked[self.seq] = pb.DataBatch(epoch=self.epoch, seq=self.seq, lane=pb.LANE_PRIORITY, items=[item])
        self.seq += 1

    async def _session(self, server: ServerProcess) -> None:
        async with channel(server.agent_port, self.credentials) as chan:
            stream = AgentStream(chan)
            async with asyncio.timeout(2):
                await stream.hello(fqdn(self.name), epoch=self.epoch)
            self.connected_to = server
            reader = asyncio.create_task(self._acks(stream))
            sent: set[int] = set()
            try:
                beat, next_beat = 0, 0.0
                while not reader.done():
                    now = asyncio.get_running_loop().time()
                    if now >= next_beat:
                        beat += 1
                        await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=beat)))
                        self.beats += 1
                        next_beat = now + INTERVAL
                    for seq, batch in sorted(self.unacked.items()):
                        if seq not in sent:
                            await stream.send(pb.AgentMessage(batch=batch))
                            sent.add(seq)
                    await asyncio.sleep(0.05)
                reader.result()
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    async def _acks(self, stream: AgentStream) -> None:
        while (reply := await stream.receive(within=3600)) is not None:
            if reply.WhichOneof("body") == "ack" and reply.ack.outcome in SETTLED and (
                    reply.ack.database == OPERATIONAL):
                self.unacked.pop(reply.ack.seq, None)  # the warehouse's ack is not awaited: health reads operational


def kubectl_get_agents(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, str]]:
    """`kubectl get agents` as a person reads it: each row's columns by header."""
    lines = cluster.kubectl("get", "agents", "-n", namespace).stdout.splitlines()
    if not lines:
        return {}
    headers = lines[0].split()
    return {row.split()[0]: dict(zip(headers, row.split(), strict=False)) for row in lines[1:]}


def shows(cluster: LocalCluster, namespace: str, name: str, **columns: str) -> Callable[[], dict[str, str] | None]:
    def check() -> dict[str, str] | None:
        row = kubectl_get_agents(cluster, namespace).get(name)
        return row if row is not None and all(row.get(k) == v for k, v in columns.items()) else None
    return check


async def test_the_agent_health_follows_its_monitor_survives_a_restart_and_is_unknown_without_heartbeats(
        fleet: Fleet, kube: Kube, kube_cluster: LocalCluster, namespace: str,
        agent_credentials: Callable[[str], Credentials]) -> None:
    [server] = fleet.start(1)
    await create_agents(kube, namespace, ["web01"])
    agent = MonitoringAgent("web01", agent_credentials("web01"), lambda: [server])
    agent.start()
    await until(shows(kube_cluster, namespace, "web01", HEARTBEAT="OK", CONNECTION="Connected", HEALTH="Unknown"),
                30, "web01 connected, nothing monitored yet")

    agent.monitor_changed(0, CRITICAL)
    await until(shows(kube_cluster, namespace, "web01", HEALTH="Critical"), 20, "web01 Critical")
    agent.monitor_changed(CRITICAL, HEALTHY)
    await until(shows(kube_cluster, namespace, "web01", HEALTH="Healthy"), 20, "web01 Healthy again")
    agent.monitor_changed(HEALTHY, CRITICAL)
    await until(shows(kube_cluster, namespace, "web01", HEALTH="Critical"), 20, "web01 Critical again")
    await until(lambda: not agent.unacked, 20, "every state change committed")

    server.stop()
    # Wipe what the Agent says, so that what the restarted server writes can only come from the operational DB.
    await kube.merge_patch(Ref("opsmgr.io/v1alpha1", "Agent", namespace, "web01"), {"status": {"health": "Unknown"}},
                           subresource="status")
    assert kubectl_get_agents(kube_cluster, namespace)["web01"]["HEALTH"] == "Unknown"
    server.start()
    await until(shows(kube_cluster, namespace, "web01", HEARTBEAT="OK", CONNECTION="Connected", HEALTH="Critical"),
                30, "web01 Critical after the restart, with no new state change sent")
    assert agent.seq == 3 and not agent.unacked

    await agent.silence()
    await until(shows(kube_cluster, namespace, "web01", HEARTBEAT="Failure", HEALTH="Unknown"), WINDOW + 20,
                "web01 Unknown once its heartbeats are lost")
    agent.start()  # heartbeats return: the monitor's last state counts again
    await until(shows(kube_cluster, namespace, "web01", HEARTBEAT="OK", HEALTH="Critical"), 30,
                "web01 Critical again once heartbeats return")
    await agent.silence()
