"""The shipped operator as a local process, with exactly the rights it ships with.

`start_operator` applies the CRDs and deploy/opsmgr.yaml (Namespace, ServiceAccount, RBAC; not the Deployment),
then runs `opsmgr operator` authenticated as its ServiceAccount with a TokenRequest token, so it can do nothing a
deployed operator could not. Its sidecar-injection webhook listens on this machine, where the kube-apiserver
reaches it by 127.0.0.1; `register_injection_webhook` points the chart's MutatingWebhookConfiguration at it.
`opsmgr dev demo` and the integration tests share this code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsmgr.api import RESOURCES
from opsmgr.api.crd import crd_stream
from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import free_port
from opsmgr.operator.render_agents import INJECT_LABEL

SOURCE_TREE = Path(__file__).resolve().parents[3]
DEPLOY = SOURCE_TREE / "deploy" / "opsmgr.yaml"
OPERATOR_ACCOUNT = ("opsmgr-system", "opsmgr-operator")
# Image names with "opsmgr" in them: the local runtime runs the venv's `opsmgr` (and `opsmgr agent`) for them.
LOCAL_IMAGE = "ghcr.io/opsmgr/opsmgr:test"
LOCAL_AGENT_IMAGE = "ghcr.io/opsmgr/opsmgr-agent:test"
INJECTION_CONFIGURATION = "opsmgr-sidecar-injection"  # the name the operator's RBAC lets it write the caBundle of


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    webhook_port: int = 0  # the sidecar-injection webhook, https://127.0.0.1:<port>/inject-agent
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    liveness_port: int = 0

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}/inject-agent"

    def restart(self) -> None:
        """SIGTERM, then the same command on the same ports, as a Deployment's new Pod would come up."""
        self.process.terminate()
        self.process.wait(timeout=30)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        until_alive(self)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, and SIGKILL when it has not exited after `grace` seconds."""
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

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


def install_operator_resources(cluster: LocalCluster) -> None:
    """The CRDs (Established) and deploy/opsmgr.yaml without its Deployment: the operator runs as a local process."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_stream(RESOURCES))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{r.crd_name()}" for r in RESOURCES])
    documents = [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d and d["kind"] != "Deployment"]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(documents))


def start_operator(cluster: LocalCluster, directory: Path, extra_env: dict[str, str] | None = None) -> RunningOperator:
    """CRDs and the shipped RBAC applied, then the operator started and alive (its liveness endpoint answers)."""
    install_operator_resources(cluster)
    kubeconfig = service_account_kubeconfig(cluster, directory)
    metrics_port, liveness_port, webhook_port = free_port(), free_port(), free_port()
    log = directory / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "OPSMGR_IMAGE": LOCAL_IMAGE,
           "OPSMGR_POSTGRES_IMAGE": "postgres:16", "OPSMGR_AGENT_IMAGE": LOCAL_AGENT_IMAGE,
           "OPSMGR_WEBHOOK_PORT": str(webhook_port), "OPSMGR_WEBHOOK_HOSTS": "127.0.0.1", **(extra_env or {})}
    command = [sys.executable, "-m", "opsmgr", "operator", "--metrics-port", str(metrics_port),
               "--liveness-port", str(liveness_port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = RunningOperator(process, metrics_port, log, webhook_port, command, env, liveness_port)
    until_alive(running)
    return running


def until_alive(running: RunningOperator, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{running.liveness_port}/healthz", timeout=2):
                return
        except OSError:
            if running.process.poll() is not None or time.monotonic() > deadline:
                running.process.kill()
                running.process.wait()
                raise RuntimeError(f"the operator did not come up:\n{running.tail()}") from None
            time.sleep(0.3)


def webhook_configuration(url: str) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration, pointed at a URL: the operator runs on this machine, not as a Pod."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": INJECTION_CONFIGURATION},
        "webhooks": [{
            "name": "sidecar-injection.opsmgr.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 5, "reinvocationPolicy": "Never",
            "clientConfig": {"url": url},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                       "scope": "Namespaced"}],
            "objectSelector": {"matchExpressions": [
                {"key": INJECT_LABEL, "operator": "In", "values": ["true"]},
                {"key": "app.kubernetes.io/managed-by", "operator": "NotIn", "values": ["opsmgr-operator"]}]},
        }],
    }


def register_injection_webhook(cluster: LocalCluster, operator: RunningOperator, timeout: float = 60.0) -> None:
    """The webhook registered, returning once the operator wrote its CA into the caBundle."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input=json.dumps(webhook_configuration(operator.webhook_url)))
    deadline = time.monotonic() + timeout
    while True:
        found = json.loads(cluster.kubectl("get", "mutatingwebhookconfiguration", INJECTION_CONFIGURATION,
                                           "-o", "json").stdout)
        if found["webhooks"][0]["clientConfig"].get("caBundle"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the operator wrote no caBundle into {INJECTION_CONFIGURATION} within "
                               f"{timeout:.0f} s:\n{operator.tail()}")
        time.sleep(0.5)
