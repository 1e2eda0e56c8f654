"""The operator as it ships: a subprocess `opsmgr operator` authenticated as its ServiceAccount, holding only the
ClusterRole of deploy/opsmgr.yaml (generated from the chart), against the session's real API server and
controller manager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsmgr.api import RESOURCES
from opsmgr.api.crd import crd_stream
from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import free_port
from tests.integration.api.conftest import Kubectl

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy" / "opsmgr.yaml"
EXAMPLES = REPO / "examples"
OPERATOR_ACCOUNT = ("opsmgr-system", "opsmgr-operator")
# An image name with "opsmgr" in it: the local runtime runs the venv's `opsmgr` for it.
TEST_IMAGE = "ghcr.io/opsmgr/opsmgr:test"
TEST_AGENT_IMAGE = "ghcr.io/opsmgr/opsmgr-agent:test"  # the runtime runs `opsmgr agent` for it


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    webhook_port: int = 0  # the sidecar-injection webhook, https://127.0.0.1:<port>/inject-agent
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    liveness_port: int = 0

    def restart(self) -> None:
        """SIGTERM, then the same command on the same ports, as a Deployment's new Pod would come up."""
        self.process.terminate()
        self.process.wait(timeout=30)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        _until_alive(self)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def service_account_kubeconfig(cluster: LocalCluster, directory: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount with a token from TokenRequest."""
    namespace, account = OPERATOR_ACCOUNT
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=6h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    document = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}],
        "current-context": account,
    }
    path = directory / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


def start_operator(cluster: LocalCluster, directory: Path, extra_env: dict[str, str] | None = None) -> RunningOperator:
    """CRDs and the shipped RBAC applied, then the operator started and alive (its liveness endpoint answers)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_stream(RESOURCES))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{r.crd_name()}" for r in RESOURCES])
    # Everything but the Deployment: here the operator runs as a local process, with the same identity.
    documents = [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d and d["kind"] != "Deployment"]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(documents))
    kubeconfig = service_account_kubeconfig(cluster, directory)
    metrics_port, liveness_port, webhook_port = free_port(), free_port(), free_port()
    log = directory / "operator.log"
    # The webhook is served on the host, where the test's kube-apiserver reaches it by 127.0.0.1.
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "OPSMGR_IMAGE": TEST_IMAGE,
           "OPSMGR_POSTGRES_IMAGE": "postgres:16", "OPSMGR_AGENT_IMAGE": TEST_AGENT_IMAGE,
           "OPSMGR_WEBHOOK_PORT": str(webhook_port), "OPSMGR_WEBHOOK_HOSTS": "127.0.0.1", **(extra_env or {})}
    command = [sys.executable, "-m", "opsmgr", "operator", "--metrics-port", str(metrics_port),
               "--liveness-port", str(liveness_port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = RunningOperator(process, metrics_port, log, webhook_port, command, env, liveness_port)
    _until_alive(running)
    return running


def _until_alive(running: RunningOperator) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{running.liveness_port}/healthz", timeout=2):
                return
        except OSError:
            if running.process.poll() is not None or time.monotonic() > deadline:
                running.process.kill()
                raise RuntimeError(f"the operator did not come up:\n{running.tail()}") from None
            time.sleep(0.3)


@pytest.fixture(scope="session")
def operator(kube_cluster: LocalCluster) -> Iterator[RunningOperator]:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-operator-"))
    running = start_operator(kube_cluster, directory)
    try:
        yield running
    finally:
        running.process.terminate()
        try:
            running.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            running.process.kill()


@pytest.fixture
def kubectl(operator: RunningOperator, kube_cluster: LocalCluster, namespace: str) -> Kubectl:
    return Kubectl(kube_cluster, namespace)


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except subprocess.CalledProcessError as error:
            last = error.stderr
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s; last seen: {last!r}")


def get_or_none(kubectl: Kubectl, kind: str, name: str) -> dict[str, Any] | None:
    code, out = kubectl.run("get", kind, name, "-o", "json", check=False)
    if code != 0:
        return None
    found: dict[str, Any] = json.loads(out)
    return found


def condition(resource: dict[str, Any] | None, type: str) -> dict[str, Any] | None:
    for item in ((resource or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == type:
            found: dict[str, Any] = item
            return found
    return None
