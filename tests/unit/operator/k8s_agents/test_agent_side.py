"""The agent's side of running in the cluster: the configuration the operator renders is one the agent accepts,
it waits for a certificate that arrives later, and a node agent turns its node's pods into discovery records."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opsmgr.agent.config import parse_config
from opsmgr.agent.identity import IdentityFiles
from opsmgr.agent.node_pods import pod_records
from opsmgr.agent.service import wait_for_identity
from opsmgr.api.agent import Placement
from opsmgr.operator.render_agents import AGENT_HOME, agent_config


def test_the_rendered_configuration_is_valid_and_rooted_beside_the_file(tmp_path: Path) -> None:
    document = agent_config(fqdn="web-0.shop.pod.cluster.local", placement=Placement.SIDECAR,
                            primary="prod-server-0.ops.svc:5723", failover=["prod-server-1.ops.svc:5723"],
                            queue_limit_mb=40, heartbeat_seconds=60, labels={"app": "web"})
    config = parse_config(document, tmp_path / "agent.yaml")
    assert config.certificates.directory == tmp_path / "identity"
    assert config.queue.path == tmp_path / "queue" / "queue.sqlite"
    assert config.queue.limit_bytes == 40 * 1024 * 1024 and config.placement == "sidecar"
    assert not config.certificates.renew and config.certificates.wait_for_identity
    node = parse_config(agent_config(fqdn="n1.node.cluster.local", placement=Placement.NODE, primary="a:5723",
                                     failover=[], queue_limit_mb=100, heartbeat_seconds=60),
                        Path(AGENT_HOME) / "agent.yaml")
    assert node.collection.discovery_interval_seconds == 60


async def test_a_waiting_agent_stops_cleanly_before_its_certificate_arrives(tmp_path: Path) -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(wait_for_identity(IdentityFiles(tmp_path), stop, poll_seconds=0.05))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    stop.set()
    async with asyncio.timeout(2):
        assert await waiting is False


def test_a_node_agent_describes_the_pods_on_its_node() -> None:
    pods = [{"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                          "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d", "controller": True}]},
             "spec": {"nodeName": "n1", "containers": [{"name": "web"}, {"name": "log"}]},
             "status": {"phase": "Running", "podIP": "10.0.0.5"}}]
    [(key, class_name, display, properties)] = pod_records(pods, "n1")
    assert (key, class_name, display) == ("Kubernetes.Pod:shop/web-1", "Kubernetes.Pod", "shop/web-1")
    assert properties["owner"] == "ReplicaSet/web-7d" and properties["containers"] == "log,web"
    assert properties["node"] == "n1" and properties["phase"] == "Running"
