"""A real `opsmgr console` process against databases filled by real agents through a real management server, and
the session's real API server; Debian's chromium, driven by Playwright, as the person using it.

The management server runs with Kubernetes access (the watcher tests' Fleet), so it writes the Agents' heartbeat,
connection, server and queue; the agents are `agent_with_collection.py` processes (data path + collection) whose
packs sample memory, read a log file and watch a TCP port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import free_port
from tests.integration.server.conftest import Pki, ServerProcess
from tests.integration.watcher.conftest import Fleet, server_kubeconfig

COLLECTION = Path(__file__).parents[1] / "agent" / "collection" / "agent_with_collection.py"
TLS_NAME = "ms.opsmgr.svc"


def chromium_path() -> str:
    """Debian's chromium; missing means the machine was not set up (`make chromium`), which must fail, not skip."""
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("Debian's chromium is missing: run `make chromium` (apt-get install chromium)")
    return found


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opsmgr-console")])
    now = datetime.now(UTC)
    import ipaddress  # noqa: PLC0415

    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "console.crt", directory / "console.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


CONSOLE_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: opsmgr-console, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: opsmgr-console, namespace: {ns}}}
rules:
  - apiGroups: [opsmgr.io]
    resources: [agents, managementpacks]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: opsmgr-console, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: opsmgr-console}}
subjects: [{{kind: ServiceAccount, name: opsmgr-console, namespace: {ns}}}]
---
# TokenReview and SubjectAccessReview, as every delegating authenticator (kube-rbac-proxy) has them.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: opsmgr-console-{ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}}
subjects: [{{kind: ServiceAccount, name: opsmgr-console, namespace: {ns}}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: alice, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: bob, namespace: {ns}}}
---
# An operator of the group: may approve agents and change alerts (alerts.opsmgr.io is the console's own resource name).
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: opsmgr-operator-person, namespace: {ns}}}
rules:
  - apiGroups: [opsmgr.io]
    resources: [agents]
    verbs: [get, list, patch]
  - apiGroups: [opsmgr.io]
    resources: [alerts]
    verbs: [update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-operates, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: opsmgr-operator-person}}
subjects: [{{kind: ServiceAccount, name: alice, namespace: {ns}}}]
"""


@dataclass
class ConsoleProcess:
    directory: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "console.log"

    def start(self, timeout: float = 60) -> None:
        config_path = self.directory / "console.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "opsmgr", "console", "--config", str(config_path)],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        context = ssl.create_default_context(cafile=self.config["tls"]["certificate"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the console exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2, context=context) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the console did not answer /healthz within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def token(cluster: LocalCluster, namespace: str, account: str) -> str:
    return cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()


@pytest.fixture
def console_access(fleet: Fleet) -> Fleet:
    """The console's ServiceAccount and rights, and two people: alice (may approve and change alerts), bob (may not)."""
    fleet.cluster.kubectl("apply", "-f", "-", input=CONSOLE_RBAC.format(ns=fleet.namespace))
    return fleet


@pytest.fixture
def start_console(console_access: Fleet) -> Iterator[Any]:
    made: list[ConsoleProcess] = []

    def start(**overrides: Any) -> ConsoleProcess:
        fleet = console_access
        directory = Path(tempfile.mkdtemp(prefix="opsmgr-console-"))
        certificate, key = self_signed(directory)
        kubeconfig = server_kubeconfig(fleet.cluster, fleet.namespace, "opsmgr-console", directory)
        config = {
            "listen": {"address": "127.0.0.1", "port": free_port()},
            "tls": {"certificate": str(certificate), "key": str(key)},
            "databases": {"operational_dsn": fleet.operational_dsn, "warehouse_dsn": fleet.warehouse_dsn},
            "kubernetes": {"namespace": fleet.namespace, "kubeconfig": str(kubeconfig)},
            "refresh_seconds": 3600,  # a reload in the middle of a click would make the test flaky, not wrong
            **overrides,
        }
        console = ConsoleProcess(directory, config)
        made.append(console)
        console.start()
        return console

    yield start
    for console in made:
        console.stop()
        if not os.environ.get("OPSMGR_KEEP_LOGS"):
            shutil.rmtree(console.directory, ignore_errors=True)


def packs(log_file: Path, port: int) -> list[dict[str, Any]]:
    """A pack that samples memory, turns ERROR lines of a log file into events, and watches a TCP port."""
    return [{"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementPack", "metadata": {"name": "linux-basics"},
             "spec": {
                 "managementGroupRef": {"name": "contoso"}, "version": "1.0.0",
                 "rules": [
                     {"name": "memory-used", "performance": {"object": "Memory", "counter": "% Used Memory",
                                                             "intervalSeconds": 10}},
                     {"name": "app-errors", "event": {"logFile": str(log_file), "pattern": "ERROR",
                                                      "level": "Error", "eventId": 500}},
                 ],
                 "monitors": [
                     {"name": "db-port", "displayName": "Database port reachable",
                      "performance": {"object": "TCP Port", "counter": "Available", "instance": f"127.0.0.1:{port}",
                                      "intervalSeconds": 10},
                      "direction": "Below", "criticalThreshold": 0.5, "alertOn": "Critical", "alertPriority": "High"},
                 ],
             }}]


@dataclass
class RealAgent:
    """`agent_with_collection.py`: the agent's data path and collection, with its packs from a file."""

    fqdn: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "agent.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@pytest.fixture
def start_agent(pki: Pki) -> Iterator[Any]:
    made: list[RealAgent] = []

    def start(fqdn: str, server: ServerProcess, pack_list: list[dict[str, Any]]) -> RealAgent:
        directory = Path(tempfile.mkdtemp(prefix="opsmgr-console-agent-"))
        identity = directory / "identity"
        identity.mkdir(mode=0o700)
        credentials = pki.agent(fqdn)
        (identity / "tls.key").write_bytes(credentials.key_pem)
        (identity / "tls.crt").write_bytes(credentials.certificate_pem)
        (identity / "ca.crt").write_bytes(credentials.ca_pem)
        config = {
            "fqdn": fqdn,
            "servers": {"primary": f"127.0.0.1:{server.agent_port}", "failover": [], "tls_server_name": TLS_NAME},
            "certificates": {"directory": str(identity)},
            "queue": {"path": str(directory / "queue.sqlite"), "limit_bytes": 100 * 1024 * 1024,
                      "bulk_linger_seconds": 0.2},
            "connection": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0, "failback_seconds": 2.0,
                           "heartbeat_seconds": 1.0, "welcome_timeout_seconds": 5.0},
            "health": {"send_queue_check_seconds": 3600},
            "refuse_on_management_host": False,  # server and agent share this machine in tests
        }
        (directory / "agent.yaml").write_text(yaml.safe_dump(config))
        (directory / "collection.yaml").write_text(yaml.safe_dump({"state_directory": str(directory / "state"),
                                                                     "log_poll_seconds": 0.2}))
        (directory / "packs.json").write_text(json.dumps(pack_list))
        agent = RealAgent(fqdn, directory)
        with agent.log_path.open("ab") as log:
            agent.process = subprocess.Popen(
                [sys.executable, str(COLLECTION), str(directory / "agent.yaml"), str(directory / "collection.yaml"),
                 str(directory / "packs.json")], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        made.append(agent)
        return agent

    yield start
    for agent in made:
        agent.stop()
        shutil.rmtree(agent.directory, ignore_errors=True)


@pytest.fixture
def open_port() -> Iterator[int]:
    """A TCP port that accepts connections for the whole test (a healthy agent's monitored port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


@pytest.fixture
def screenshots() -> Path:
    """Where the run's screenshots go; kept after the run (its path is printed in the summary)."""
    root = Path(os.environ.get("OPSMGR_SCREENSHOTS") or tempfile.mkdtemp(prefix="opsmgr-console-screenshots-"))
    root.mkdir(parents=True, exist_ok=True)
    return root
