"""How `make demo` decides that it is ready: Agents Healthy, heartbeat OK and fresh, in Pods the operator rendered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsmgr.api import RESOURCES_BY_KIND
from opsmgr.dev.demo import DEMO_EXAMPLES, DemoManifests, agent_views, ready_agents
from opsmgr.operator.render_agents import AGENT_ANNOTATION, NODE_LABEL, SIDECAR, node_agent_workload

NOW = datetime(2026, 12, 6, 19, 0, 0, tzinfo=UTC)
GROUP = "demo"


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def agent(name: str, placement: str = "Sidecar", *, health: str = "Healthy", heartbeat: str | None = "OK",
          age: float | None = 3, group: str = GROUP, labels: dict[str, str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"health": health, "connection": "Connected"}
    if heartbeat is not None:
        status["heartbeat"] = heartbeat
    if age is not None:
        status["lastHeartbeatTime"] = stamp(age)
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"managementGroupRef": {"name": group}, "placement": placement}, "status": status}


def running(container: str, *, init: bool) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"phase": "Running", key: [{"name": container, "state": {"running": {"startedAt": stamp(60)}}}]}


def sidecar_pod(name: str, *, injected: bool = True, started: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {AGENT_ANNOTATION: name} if injected else {}},
            "spec": {"nodeName": "local", "initContainers": [{"name": SIDECAR}] if injected else [],
                     "containers": [{"name": "web"}]},
            "status": running(SIDECAR, init=True) if started else {"phase": "Pending"}}


def node_pod(name: str, node: str = "local", owner: str = node_agent_workload(GROUP)) -> dict[str, Any]:
    return {"metadata": {"name": name, "ownerReferences": [{"kind": "DaemonSet", "name": owner}]},
            "spec": {"nodeName": node, "containers": [{"name": "agent"}]}, "status": running("agent", init=False)}


def views(agents: list[dict[str, Any]], pods: list[dict[str, Any]], interval: int = 10) -> list[Any]:
    return agent_views(agents, pods, group=GROUP, interval=interval, now=NOW)


def test_healthy_agents_with_fresh_heartbeats_in_rendered_pods_are_ready() -> None:
    agents = [agent("web-a"), agent("web-b"), agent("demo-node-local", "Node", labels={NODE_LABEL: "local"})]
    pods = [sidecar_pod("web-a"), sidecar_pod("web-b"), node_pod("demo-node-agent-x7k2p")]
    judged = views(agents, pods)
    assert [v.name for v in ready_agents(judged)] == ["demo-node-local", "web-a", "web-b"]
    assert {v.name: v.pod for v in judged} == {"demo-node-local": "demo-node-agent-x7k2p", "web-a": "web-a",
                                                "web-b": "web-b"}


@pytest.mark.parametrize(("case", "kwargs"), [
    ("warning", {"health": "Warning"}),
    ("unknown health", {"health": "Unknown"}),
    ("heartbeat failure", {"heartbeat": "Failure"}),
    ("no heartbeat verdict yet", {"heartbeat": None}),
    ("never heartbeated", {"age": None}),
    ("last heartbeat two intervals old", {"age": 20}),
    ("another group", {"group": "production"}),
])
def test_an_agent_is_not_ready_when(case: str, kwargs: dict[str, Any]) -> None:
    assert ready_agents(views([agent("web-a", **kwargs)], [sidecar_pod("web-a")])) == [], case


def test_freshness_follows_the_agents_own_heartbeat_interval() -> None:
    slow = agent("web-a", age=50)
    slow["spec"]["heartbeat"] = {"intervalSeconds": 30}
    assert [v.name for v in ready_agents(views([slow], [sidecar_pod("web-a")]))] == ["web-a"]


def test_an_agent_counts_only_in_a_pod_the_operator_rendered_and_the_runtime_runs() -> None:
    assert ready_agents(views([agent("web-a")], [])) == []
    assert ready_agents(views([agent("web-a")], [sidecar_pod("web-a", injected=False)])) == []
    assert ready_agents(views([agent("web-a")], [sidecar_pod("web-a", started=False)])) == []
    node = agent("demo-node-local", "Node", labels={NODE_LABEL: "local"})
    assert ready_agents(views([node], [node_pod("x", owner="someone-elses-daemonset")])) == []
    assert ready_agents(views([node], [node_pod("x", node="elsewhere")])) == []


def test_the_demo_examples_are_valid_and_ask_for_three_agents_on_a_short_heartbeat(tmp_path: Path) -> None:
    manifests = DemoManifests.load(DEMO_EXAMPLES, tmp_path / "queues")
    for document in [manifests.group, *manifests.others]:
        RESOURCES_BY_KIND[document["kind"]].model_validate(document)
    assert manifests.group_name == GROUP and manifests.interval <= 10
    assert manifests.group["spec"]["nodeAgents"] == {"enabled": True, "queueHostPath": str(tmp_path / "queues")}
    (deployment,) = manifests.application
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["opsmgr.io/inject-agent"] == "true"
    # One node agent (the local runtime is one node) and a sidecar per replica.
    assert 1 + deployment["spec"]["replicas"] >= 3
    packs = [d for d in manifests.others if d["kind"] == "ManagementPack"]
    assert packs and all(p["spec"]["managementGroupRef"]["name"] == GROUP for p in packs)
    assert any(p["spec"].get("monitors") for p in packs), "without a monitor every agent stays Unknown"
