"""Enrollment against the real API server: a real `opsmgr server` process authenticated as the servers'
ServiceAccount with exactly the access the operator renders, agents running `opsmgr enroll` as processes, and
administrators running `opsmgr token` and `opsmgr agents` with the admin kubeconfig.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsmgr.api import ManagementGroup
from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import LocalPostgres, free_port
from opsmgr.operator import render
from opsmgr.pki import Approval, CertificateAuthority, ManagementServerNames, TrustBundle, create_ca, issue_with_new_key
from tests.conftest import scratch_database
from tests.integration.api.conftest import Kubectl, opsmgr_crds  # noqa: F401 (a fixture)
from tests.integration.server.conftest import ServerProcess

GROUP = "contoso"
FOREIGN_SIGNER_TOKEN = (  # a well-formed JWT signed by nobody this cluster trusts
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZvcmdlZCJ9.eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMuZGVmYXVsdC5zdmMuY2x1c3Rlci5sb2Nh"
    "bCIsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDpkZWZhdWx0OmRlZmF1bHQiLCJhdWQiOlsib3BzbWdyIl0sImV4cCI6NDEwMjQ0NDgw"
    "MH0.c2lnbmF0dXJlLW9mLWEtZm9yZ2VyeQ")


def service_account_kubeconfig(cluster: LocalCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as `account` with a TokenRequest token (as its Pod would)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cluster_name = admin["clusters"][0]["name"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster_name, "user": account,
                                                   "namespace": namespace}}],
        "current-context": account}))
    path.chmod(0o600)
    return path


@dataclass
class Enrollment:
    """One group in its namespace, its CA, one running server with enrollment, and the tools around them."""

    cluster: LocalCluster
    kubectl: Kubectl
    namespace: str
    ca: CertificateAuthority
    server: ServerProcess
    server_name: str
    enrollment_port: int
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "group-ca.crt"

    def opsmgr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """An `opsmgr` command as an administrator (admin kubeconfig), in the group's namespace."""
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        return subprocess.run([sys.executable, "-m", "opsmgr", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def create_token(self, *options: str) -> str:
        done = self.opsmgr("token", "create", "--group", GROUP, "-n", self.namespace, *options)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def enroll_command(self, fqdn: str, identity: Path, *proof: str, wait: str = "60s") -> list[str]:
        return [sys.executable, "-m", "opsmgr", "enroll", "--server", f"127.0.0.1:{self.enrollment_port}",
                "--fqdn", fqdn, "--identity-dir", str(identity), "--ca-bundle", str(self.ca_file),
                "--server-name", self.server_name, "--wait", wait, *proof]

    def enroll(self, fqdn: str, identity: Path, *proof: str, wait: str = "60s") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.enroll_command(fqdn, identity, *proof, wait=wait), capture_output=True,
                              text=True, timeout=180, check=False)

    def set_policy(self, policy: str) -> None:
        self.kubectl.run("patch", "managementgroup", GROUP, "--type=merge", "-p",
                         json.dumps({"spec": {"approvalPolicy": policy}}))

    def agent(self, name: str) -> dict[str, Any] | None:
        code, out = self.kubectl.run("get", "agent", name, "-o", "json", check=False)
        return json.loads(out) if code == 0 else None

    def events(self, name: str) -> list[dict[str, Any]]:
        _, out = self.kubectl.run("get", "events", "-o", "json", "--field-selector", f"involvedObject.name={name}")
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def wait_for(self, check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"{what} not seen within {timeout:.0f} s; server log:\n{self.server.log_tail()}")


def _group_body(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup",
            "metadata": {"name": GROUP, "namespace": namespace},
            "spec": {"servers": {"replicas": 1}, "approvalPolicy": "Review", "certificates": {"validity": "720h",
                                                                                            "renewBefore": "240h"}}}


def _apply(cluster: LocalCluster, documents: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(documents))


@pytest.fixture
async def enrollment(opsmgr_crds: LocalCluster, namespace: str,  # noqa: F811
                     postgres_server: LocalPostgres) -> AsyncIterator[Enrollment]:
    cluster = opsmgr_crds
    kubectl = Kubectl(cluster, namespace)
    created = kubectl.create(_group_body(namespace))
    group = ManagementGroup.from_body(created)
    names = render.group_names(group)
    now = datetime.now(UTC)
    ca = create_ca(GROUP, now)
    # The CA Secret as the operator writes it, and the servers' access exactly as the operator renders it.
    _apply(cluster, [render.render_ca_secret(group, ca.certificate_pem(), ca.key_pem(), TrustBundle.of(ca).pem(),
                                             ca.certificate.not_valid_after_utc.isoformat()),
                     {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                      "metadata": {"name": render.ENROLLMENT_CLUSTER_ROLE},
                      "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                                 "verbs": ["create"]}]},
                     *render.render_server_access(group), render.render_server_enrollment_binding(group)])
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-enrollment-"))
    server_names = ManagementServerNames(group=GROUP, namespace=namespace, statefulset=names.statefulset,
                                         headless_service=names.headless_service, shared_service=names.agent_service,
                                         replica=0)
    issued = issue_with_new_key(ca, Approval(server_names.identity(), "test", now), now,
                                dns_names=server_names.dns_names())
    (directory / "tls.crt").write_bytes(issued.certificate_pem())
    (directory / "tls.key").write_bytes(issued.key_pem())
    (directory / "ca.crt").write_bytes(ca.certificate_pem())
    (directory / "group-ca.crt").write_bytes(ca.certificate_pem())
    (directory / "revocations.yaml").write_text("revocations: []\n")
    (directory / "directory.yaml").write_text("agents: []\ngateways: []\n")
    kubeconfig = service_account_kubeconfig(cluster, namespace, names.server_account, directory / "server.kubeconfig")
    async with scratch_database(postgres_server, "op") as operational, \
            scratch_database(postgres_server, "wh") as warehouse:
        agent_port, metrics_port, enrollment_port = free_port(), free_port(), free_port()
        config = {
            "group": GROUP, "name": server_names.identity().name,
            "listen": {"address": "127.0.0.1", "port": agent_port},
            "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt"},
            "databases": {"operational_dsn": operational, "warehouse_dsn": warehouse},
            "metrics": {"address": "127.0.0.1", "port": metrics_port},
            "revocations": {"file": str(directory / "revocations.yaml")},
            "directory": {"file": str(directory / "directory.yaml")},
            "kubernetes": {"namespace": namespace, "member": names.server_pod(0), "kubeconfig": str(kubeconfig)},
            "enrollment": {"address": "127.0.0.1", "port": enrollment_port, "ca_secret": names.ca_secret,
                           "retry_after_seconds": 1},
        }
        server = ServerProcess(directory, config, agent_port, metrics_port)
        server.start()
        try:
            yield Enrollment(cluster, kubectl, namespace, ca, server, server_names.identity().name, enrollment_port,
                             directory)
        finally:
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def identity_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-agent-identity-"))
    yield directory / "identity"
    shutil.rmtree(directory, ignore_errors=True)
