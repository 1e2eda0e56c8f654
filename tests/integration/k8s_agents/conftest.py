"""The shipped operator with its sidecar-injection webhook registered in the session's real kube-apiserver, and a
management group whose servers and embedded PostgreSQL run as Pods through the local runtime."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.local_operator import INJECTION_CONFIGURATION, register_injection_webhook
from opsmgr.operator.render_agents import INJECT_LABEL
from tests.integration.api.conftest import Kubectl
from tests.integration.operator.conftest import (
    RunningOperator,
    condition,
    eventually,
    get_or_none,
)
from tests.integration.operator.conftest import kubectl as kubectl  # noqa: PLC0414 (the fixture, shared)
from tests.integration.operator.conftest import operator as operator  # noqa: PLC0414 (the fixture, shared)

CONFIGURATION = INJECTION_CONFIGURATION


def probe_pod(name: str = "probe") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": f"{name}-", "labels": {INJECT_LABEL: "true", "app": name}},
            "spec": {"containers": [{"name": "app", "image": "python:3.11-slim",
                                     "command": ["python", "-c", "import time; time.sleep(100000)"]}]}}


def injected(pod: dict[str, Any]) -> bool:
    return any(c["name"] == "opsmgr-agent" for c in (pod.get("spec") or {}).get("initContainers") or [])


def dry_run(kubectl: Kubectl, document: dict[str, Any]) -> dict[str, Any]:
    _, out = kubectl.run("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(document))
    created: dict[str, Any] = json.loads(out)
    return created


@pytest.fixture(scope="session")
def injection_webhook(operator: RunningOperator, kube_cluster: LocalCluster) -> Iterator[str]:
    """The webhook registered; yields its URL once the operator wrote its CA into the caBundle."""
    register_injection_webhook(kube_cluster, operator)
    yield operator.webhook_url
    kube_cluster.kubectl("delete", "mutatingwebhookconfiguration", CONFIGURATION, "--ignore-not-found")


def create_group(kubectl: Kubectl, name: str = "prod", **spec: Any) -> None:
    kubectl.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup", "metadata": {"name": name},
                    "spec": {"servers": {"replicas": 1}, **spec}})


def wait_until_injecting(kubectl: Kubectl, group: str) -> None:
    """The webhook has seen the group (its watch) and the kube-apiserver trusts it: a dry run gets the sidecar."""
    eventually(lambda: injected(dry_run(kubectl, probe_pod())), timeout=60,
               what=f"a dry-run pod injected for group {group}")


def wait_ready(kubectl: Kubectl, group: str, timeout: float = 300, runtime: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = get_or_none(kubectl, "managementgroup", group)
        if (condition(found, "Ready") or {}).get("status") == "True":
            return
        time.sleep(1)
    conditions = ((found or {}).get("status") or {}).get("conditions")
    _, listing = kubectl.run("get", "pods", "-o", "wide", check=False)
    logs = runtime.logs(kubectl.namespace, f"{group}-server-0", "server")[-3000:] if runtime is not None else ""
    raise AssertionError(f"ManagementGroup {group} not Ready within {timeout:.0f} s: {conditions}\n{listing}\n"
                         f"server log:\n{logs}")


def pods(kubectl: Kubectl, selector: str) -> list[dict[str, Any]]:
    _, out = kubectl.run("get", "pods", "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def settle(seconds: float) -> None:
    """Let time pass on purpose (a heartbeat window) before asserting that nothing happened in it."""
    time.sleep(seconds)
