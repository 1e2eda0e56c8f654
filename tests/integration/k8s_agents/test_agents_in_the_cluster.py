"""Agents on Kubernetes, end to end on the real kube-apiserver with the webhook registered and the local runtime:
a labelled Deployment gets native sidecars whose agents come up, report and appear as Agents; a node agent sees
the pods on its node; scaling to zero retires the Agents with a Goodbye and no Heartbeat Failure; with the webhook
unreachable, pods start as if there were no webhook (failurePolicy Ignore)."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from opsmgr.dev.postgres import free_port
from opsmgr.operator.render_agents import INJECT_LABEL, pod_fqdn
from tests.integration.api.conftest import Kubectl
from tests.integration.k8s_agents.conftest import (
    CONFIGURATION,
    create_group,
    injected,
    pods,
    probe_pod,
    settle,
    wait_ready,
    wait_until_injecting,
)
from tests.integration.operator.conftest import eventually, get_or_none

HEARTBEAT_FAILURE = "Health Service Heartbeat Failure"


def deployment(name: str, replicas: int) -> dict[str, Any]:
    template = probe_pod(name)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": template["metadata"]["labels"]},
                                  "spec": template["spec"]}}}


def operational_dsn(kubectl: Kubectl, group: str) -> str:
    secret = kubectl.get("secret", f"{group}-db-credentials")
    return base64.b64decode(secret["data"]["operational-uri"]).decode()


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def gone(kubectl: Kubectl, kind: str, name: str) -> bool:
    return get_or_none(kubectl, kind, name) is None


def phase_is(kubectl: Kubectl, name: str, phase: str) -> bool:
    return bool(((get_or_none(kubectl, "pod", name) or {}).get("status") or {}).get("phase") == phase)


def sidecar_started(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    return any(s["name"] == "opsmgr-agent" and "running" in (s.get("state") or {}) for s in statuses)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sidecar_and_node_agents_come_report_and_go_without_alerts(kubectl: Kubectl, local_runtime: Any,
                                                                   injection_webhook: str) -> None:
    # A short heartbeat window (20 s), so a silence the watcher took for a failure would show within the test.
    create_group(kubectl, heartbeat={"intervalSeconds": 10, "missedThreshold": 2})
    wait_until_injecting(kubectl, "prod")
    wait_ready(kubectl, "prod", runtime=local_runtime)
    kubectl.create(deployment("web", 2))

    def both_sidecars_running() -> list[dict[str, Any]] | None:
        # A partial list would be truthy, and `eventually` returns the first truthy answer: ask for both at once.
        running = [p for p in pods(kubectl, "app=web") if sidecar_started(p)]
        return running if len(running) == 2 else None

    running = eventually(both_sidecars_running, timeout=120, what="two web pods with their agent sidecar running")
    assert len(running) == 2
    for pod in running:
        first = pod["spec"]["initContainers"][0]
        assert first["name"] == "opsmgr-agent" and first["restartPolicy"] == "Always"
    names = sorted(p["metadata"]["name"] for p in running)
    fqdns = [pod_fqdn(name, kubectl.namespace) for name in names]

    def issued(name: str) -> dict[str, Any] | None:
        agent = get_or_none(kubectl, "agent", name)
        return agent if ((agent or {}).get("status") or {}).get("certificate", {}).get("serialNumber") else None

    for name in names:
        agent = eventually(partial(issued, name), timeout=60, what=f"Agent {name} approved with a certificate")
        assert agent["spec"]["placement"] == "Sidecar" and agent["status"]["approval"] == "Approved"
        assert agent["metadata"]["ownerReferences"][0]["kind"] == "Pod"

    dsn = operational_dsn(kubectl, "prod")
    eventually(lambda: len(query(dsn, "SELECT agent FROM agent_presence WHERE agent = ANY($1) AND connected "
                                      "AND last_heartbeat_at IS NOT NULL", fqdns)) == 2,
               timeout=120, what="both sidecar agents connected and heartbeating")
    eventually(lambda: len(query(dsn, "SELECT 1 FROM discovered_objects WHERE agent = ANY($1) AND class_name = "
                                      "'Kubernetes.Pod'", fqdns)) == 2,
               timeout=60, what="each sidecar reported the pod it runs in")

    # Node placement: one agent for the local runtime's node, reporting the pods scheduled on it.
    queue_root = Path(tempfile.mkdtemp(prefix="opsmgr-node-queue-"))
    kubectl.run("patch", "managementgroup", "prod", "--type=merge", "-p",
                json.dumps({"spec": {"nodeAgents": {"enabled": True, "queueHostPath": str(queue_root)}}}))
    node_agent = eventually(lambda: get_or_none(kubectl, "agent", "prod-node-local"), timeout=60,
                            what="an Agent for node local")
    assert node_agent["spec"] == {**node_agent["spec"], "placement": "Node", "fqdn": "local.node.cluster.local"}
    seen = eventually(lambda: {r["display_name"] for r in query(
        dsn, "SELECT display_name FROM discovered_objects WHERE agent = 'local.node.cluster.local' AND class_name = "
             "'Kubernetes.Pod'")} >= {f"{kubectl.namespace}/{n}" for n in names}, timeout=180,
        what="the node agent reported the web pods on its node")
    assert seen
    assert any(queue_root.rglob("queue.sqlite")), "the node agent's queue lives on the host path"

    # Scale to zero: each agent says Goodbye after its application stopped; the Agents are retired.
    kubectl.run("scale", "deployment", "web", "--replicas=0")
    for name in names:
        eventually(partial(gone, kubectl, "agent", name), timeout=120, what=f"Agent {name} retired with its pod")
    # Presence is written in batches, so the Goodbye shows up a flush later.
    eventually(lambda: len(query(dsn, "SELECT agent FROM agent_presence WHERE agent = ANY($1) AND goodbye_at IS NOT "
                                      "NULL", fqdns)) == 2 or query(dsn, "SELECT * FROM agent_presence WHERE agent = "
                                                                         "ANY($1)", fqdns) == [],
               timeout=30, what="both sidecars said Goodbye before their pods went")
    presence = query(dsn, "SELECT agent, connected, goodbye_at FROM agent_presence WHERE agent = ANY($1)", fqdns)
    assert len(presence) == 2 and all(r["goodbye_at"] is not None and not r["connected"] for r in presence), presence
    scaled_down = query(dsn, "SELECT now() AS t")[0]["t"]
    settle(50)  # more than two failure windows of silence
    alerts = query(dsn, "SELECT agent, name, description, raised_at, resolution_state FROM alerts WHERE agent = "
                        "ANY($1) AND name = $2 AND last_raised_at >= $3", fqdns, HEARTBEAT_FAILURE, scaled_down)
    assert alerts == [], f"scaled down at {scaled_down}: {[dict(r) for r in alerts]}"


@pytest.mark.timeout(240)
def test_with_the_webhook_down_pods_start_as_if_there_were_none(kubectl: Kubectl, local_runtime: Any,
                                                                kube_cluster: Any, injection_webhook: str) -> None:
    create_group(kubectl, "quiet")
    wait_until_injecting(kubectl, "quiet")
    configuration = json.loads(kube_cluster.kubectl("get", "mutatingwebhookconfiguration", CONFIGURATION,
                                                    "-o", "json").stdout)
    # The operator's endpoint goes away: nothing listens where the kube-apiserver calls.
    down = json.loads(json.dumps(configuration))
    down["webhooks"][0]["clientConfig"]["url"] = f"https://127.0.0.1:{free_port()}/inject-agent"
    kube_cluster.kubectl("replace", "-f", "-", input=json.dumps(down))
    try:
        labelled = kubectl.create(probe_pod("labelled"))
        plain = probe_pod("plain")
        plain["metadata"]["labels"] = {"app": "plain"}
        unlabelled = kubectl.create(plain)
        assert not injected(labelled) and not injected(unlabelled)
        for pod in (labelled, unlabelled):
            name = pod["metadata"]["name"]
            eventually(partial(phase_is, kubectl, name, "Running"), timeout=60,
                       what=f"pod {name} Running without an agent")
        assert get_or_none(kubectl, "agent", labelled["metadata"]["name"]) is None
    finally:
        restored = json.loads(kube_cluster.kubectl("get", "mutatingwebhookconfiguration", CONFIGURATION,
                                                   "-o", "json").stdout)
        restored["webhooks"][0]["clientConfig"]["url"] = configuration["webhooks"][0]["clientConfig"]["url"]
        kube_cluster.kubectl("replace", "-f", "-", input=json.dumps(restored))
    # And back: the next labelled pod gets its agent again.
    wait_until_injecting(kubectl, "quiet")
    assert INJECT_LABEL in labelled["metadata"]["labels"]


@pytest.mark.timeout(180)
def test_an_agent_whose_pod_vanished_without_a_trace_is_retired_after_the_quiet_period(
        kubectl: Kubectl, injection_webhook: str) -> None:
    create_group(kubectl, "sweep", sidecarAgents={"retireAfter": "5s"})
    # An Agent the operator would have made for a pod, whose pod is gone and whose deletion nobody saw.
    kubectl.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "Agent",
                    "metadata": {"name": "ghost-abcde", "labels": {"opsmgr.io/placement": "Sidecar",
                                                                  "opsmgr.io/pod": "ghost-abcde"}},
                    "spec": {"managementGroupRef": {"name": "sweep"}, "fqdn": "ghost-abcde.x.pod.cluster.local",
                             "placement": "Sidecar"}})
    eventually(partial(gone, kubectl, "agent", "ghost-abcde"), timeout=120,
               what="the Agent of a vanished pod retired by the sweep")
