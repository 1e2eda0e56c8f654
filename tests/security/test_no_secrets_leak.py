"""No private key, password or token reaches a log, a Kubernetes Event, a status, a ConfigMap or a workload spec.

The real system runs (the shipped operator, the example group on its embedded PostgreSQL with its server as a Pod
under the local runtime, a VM enrolling with a join token); then every secret value actually in the cluster is
looked for in everything a person without access to Secrets can read.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsmgr.api import RESOURCES, ManagementGroup
from opsmgr.dev.runtime import RuntimeThread
from opsmgr.operator import render
from opsmgr.pki import ManagementServerNames
from opsmgr.protocol.enrollment import ENROLLMENT_PORT
from tests.integration.api.conftest import Kubectl
from tests.integration.operator.conftest import (  # noqa: F401 (fixtures: the shipped operator, kubectl beside it)
    RunningOperator,
    condition,
    eventually,
    example,
    get_or_none,
    kubectl,
    operator,
)

PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----(.*?)-----END [A-Z ]*PRIVATE KEY-----", re.S)
PRIVATE_KEY_HEADER = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
DSN_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@/'\"]+)@")
KV_PASSWORD = re.compile(r"\bpassword=([^\s'\"&;,]+)", re.I)
JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{20,}")
MASKED = re.compile(r"^(\*+|x+|redacted|<[^>]*>|\$\{?[A-Za-z_]+\}?)$", re.I)
MIN_SECRET = 8  # shorter values would match by chance, and no secret of ours is that short


@dataclass(frozen=True)
class Needle:
    """A secret value, and where it was found (never the value itself in a message)."""

    origin: str
    value: str

    def forms(self) -> list[str]:
        # The value as written, and as a Secret manifest carries it (a logged manifest leaks it base64-encoded).
        return [self.value, base64.b64encode(self.value.encode()).decode()]


@dataclass(frozen=True)
class Finding:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.what} in {self.where}"


def needles_in(origin: str, text: str) -> list[Needle]:
    """The secret parts of one Secret value: private keys, DSN passwords, JWTs, or the whole opaque value."""
    found: list[Needle] = []
    for match in PRIVATE_KEY.finditer(text):
        lines = [line for line in match.group(1).split() if line]
        found.append(Needle(f"{origin} (private key)", "".join(lines)))
        # One line of a key is a leak too; the middle one, because the first lines are a header shared by all keys.
        found.append(Needle(f"{origin} (private key, a line of it)", lines[len(lines) // 2]))
    for pattern, what in ((DSN_PASSWORD, "password in a DSN"), (KV_PASSWORD, "password= value")):
        found += [Needle(f"{origin} ({what})", m.group(1)) for m in pattern.finditer(text)
                  if not MASKED.match(m.group(1))]
    found += [Needle(f"{origin} (token)", m.group(0)) for m in JWT.finditer(text)]
    if not found and "\n" not in text.strip() and "BEGIN CERTIFICATE" not in text:
        found.append(Needle(origin, text.strip()))  # an opaque value: a password, a token, a key in another encoding
    return [needle for needle in found if len(needle.value) >= MIN_SECRET]


def needles_of_secrets(secrets: Iterable[Mapping[str, Any]]) -> list[Needle]:
    found: list[Needle] = []
    for secret in secrets:
        meta = secret["metadata"]
        for key, encoded in (secret.get("data") or {}).items():
            text = base64.b64decode(encoded).decode(errors="replace")
            found += needles_in(f"Secret {meta['namespace']}/{meta['name']} key {key}", text)
    return found


def scan(haystacks: Mapping[str, str], needles: Sequence[Needle]) -> list[Finding]:
    """Every secret value, private-key block or unmasked DSN password found in any haystack."""
    findings: list[Finding] = []
    for where, text in haystacks.items():
        for needle in needles:
            if any(form in text for form in needle.forms()):
                findings.append(Finding(where, f"the value of {needle.origin}"))
        if PRIVATE_KEY_HEADER.search(text):
            findings.append(Finding(where, "a PEM private key"))
        for pattern, what in ((DSN_PASSWORD, "a password in a DSN"), (KV_PASSWORD, "a password= value")):
            if any(not MASKED.match(m.group(1)) for m in pattern.finditer(text)):
                findings.append(Finding(where, what))
    return findings


# --- the scanner can fail ---

SAMPLE_KEY = ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5jw9M+hf0t5NMoAoGCCqGSM49\n"
              "AwEHoUQDQgAE7mwa/0dbTE0LEPa9IkoXqPkk+gdnTWhLUWpo09sjaPQYxu81HdEW\n"
              "mO7Opc7QAz0jVz2+7Bx84YkglkpMtNQN0Q==\n-----END EC PRIVATE KEY-----\n")
SAMPLE_SECRETS = [{"metadata": {"namespace": "shop", "name": "db"}, "data": {
    "tls.key": base64.b64encode(SAMPLE_KEY.encode()).decode(),
    "operational-uri": base64.b64encode(b"postgresql://opsmgr:s3cr3t-Pa55word@db:5432/operational").decode(),
    "password": base64.b64encode(b"s3cr3t-Pa55word").decode(),
    "tls.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()}}]


def test_the_scanner_finds_each_kind_of_leak_and_names_where() -> None:
    needles = needles_of_secrets(SAMPLE_SECRETS)
    assert {n.origin for n in needles} >= {"Secret shop/db key tls.key (private key)", "Secret shop/db key password",
                                           "Secret shop/db key operational-uri (password in a DSN)"}
    assert not any("tls.crt" in n.origin for n in needles), "a certificate is public"
    middle_line = SAMPLE_KEY.splitlines()[2]
    leaks = {
        "operator log": "connecting to postgresql://opsmgr:s3cr3t-Pa55word@db:5432/operational",
        "Event shop/x": "reason=Failed message=password s3cr3t-Pa55word refused",
        "status of Agent shop/a": json.dumps({"message": f"bad key {middle_line}"}),
        "server log": "applied {'data': {'password': '" + base64.b64encode(b"s3cr3t-Pa55word").decode() + "'}}",
        "job log": "dsn: host=db user=opsmgr password=hunter2hunter2",
        "pod log": SAMPLE_KEY,
    }
    findings = scan(leaks, needles)
    assert {f.where for f in findings} == set(leaks), [str(f) for f in findings]
    assert "the value of Secret shop/db key password in Event shop/x" in map(str, findings)
    clean = {"operator log": "connecting to postgresql://opsmgr:***@db:5432/operational as opsmgr",
             "server log": "password=<redacted> token id abc123 used"}
    assert scan(clean, needles) == []


# --- the real system ---

def _kubectl_json(client: Kubectl, *args: str) -> Any:
    return json.loads(client.cluster.kubectl(*args, "-o", "json").stdout)


def _runtime_files(runtime: RuntimeThread, namespace: str) -> tuple[dict[str, str], dict[str, str]]:
    """(process logs, every other file) of the namespace's Pods under the local runtime."""
    logs: dict[str, str] = {}
    files: dict[str, str] = {}
    for pod in (runtime.runtime.settings.root / "pods").glob(f"{namespace}_*"):
        for path in (p for p in pod.rglob("*") if p.is_file()):
            relative = path.relative_to(pod)
            text = path.read_text(errors="replace")
            if relative.parts[0] == "logs":
                logs[f"process log {pod.name}/{relative}"] = text
            else:
                files[f"{pod.name}/{relative}"] = text
    return logs, files


def _opsmgr(*args: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsmgr", *args], env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_secret_reaches_a_log_an_event_a_status_or_a_spec(operator: RunningOperator, kubectl: Kubectl,  # noqa: F811
                                                             local_runtime: RuntimeThread, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # the local runtime logs in this process: its lines are scanned too
    namespace, cluster = kubectl.namespace, kubectl.cluster
    body = example("management-group.yaml")
    body["spec"]["servers"]["replicas"] = 1  # one network namespace for every Pod: one server on 5723
    body["spec"]["approvalPolicy"] = "AutoApprove"
    group = ManagementGroup.from_body(kubectl.create(body))
    eventually(lambda: (condition(get_or_none(kubectl, "managementgroup", "production"), "Ready") or {})
               .get("status") == "True", timeout=360, what="the group Ready")

    # A VM enrolls with a join token at the server Pod's enrollment endpoint.
    names = render.group_names(group)
    created = _opsmgr("token", "create", "--group", "production", "-n", namespace, "--single-use",
                      kubeconfig=cluster.kubeconfig)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    ca = _kubectl_json(kubectl, "get", "secret", names.ca_secret, "-n", namespace)
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(ca["data"]["tls.crt"]))
    pod_ip = kubectl.get("pod", names.server_pod(0))["status"]["podIP"]
    server = ManagementServerNames(group=names.group, namespace=namespace, statefulset=names.statefulset,
                                   headless_service=names.headless_service, shared_service=names.agent_service,
                                   replica=0)
    enrolled = _opsmgr("enroll", "--server", f"{pod_ip}:{ENROLLMENT_PORT}", "--fqdn", "vm01.contoso.test",
                       "--identity-dir", str(tmp_path / "identity"), "--ca-bundle", str(tmp_path / "ca.crt"),
                       "--server-name", server.identity().name, "--wait", "60s", "--token", token,
                       kubeconfig=cluster.kubeconfig)
    assert enrolled.returncode == 0, enrolled.stderr
    eventually(lambda: get_or_none(kubectl, "agent", "vm01.contoso.test"), timeout=60, what="the enrolled Agent")

    # What must stay secret: every Secret's data here and in the operator's namespace, the join token, the VM's
    # new key, and the ServiceAccount tokens the operator and the Pods authenticate with.
    secrets = [s for ns in (namespace, "opsmgr-system")
               for s in _kubectl_json(kubectl, "get", "secrets", "-n", ns)["items"]]
    needles = needles_of_secrets(secrets)
    needles += needles_in("the join token `opsmgr token create` printed", token)
    needles.append(Needle("the join token's secret part", token.split(".", 1)[1]))
    needles += needles_in("the enrolled VM's tls.key", (tmp_path / "identity" / "tls.key").read_text())
    logs, pod_files = _runtime_files(local_runtime, namespace)
    for where, text in pod_files.items():
        needles += [Needle(f"the ServiceAccount token in {where}", m.group(0)) for m in JWT.finditer(text)]
    operator_kubeconfig = operator.log.parent / "operator.kubeconfig"
    needles += [Needle("the operator's ServiceAccount token", m.group(0))
                for m in JWT.finditer(operator_kubeconfig.read_text())]
    origins = " ".join(n.origin for n in needles)
    for kind in ("(private key)", "key password", "join token", "ServiceAccount token in", "operator's", "VM's"):
        assert kind in origins, f"no secret of kind {kind!r} found to look for: the scan would prove nothing"

    # Where a person without Secret access looks.
    haystacks = {**logs, "operator log": operator.log.read_text(errors="replace"),
                 "local runtime log (this process)": caplog.text,
                 "opsmgr token create (stderr)": created.stderr,
                 "opsmgr enroll output": enrolled.stdout + enrolled.stderr}
    assert all(any(f"_{pod}_" in where for where in logs) for pod in (names.server_pod(0), f"{names.database}-0")), logs
    for event in _kubectl_json(kubectl, "get", "events", "-A")["items"]:
        haystacks[f"Event {event['metadata']['namespace']}/{event['metadata']['name']}"] = json.dumps(event)
    for resource in RESOURCES:
        for item in _kubectl_json(kubectl, "get", resource.crd_name(), "-A")["items"]:
            where = f"{item['kind']} {item['metadata']['namespace']}/{item['metadata']['name']}"
            haystacks[f"status of {where}"] = json.dumps(item.get("status") or {})
            haystacks[f"annotations of {where}"] = json.dumps(item["metadata"].get("annotations") or {})
    for kind in ("configmaps", "pods", "statefulsets", "jobs", "services"):
        for item in _kubectl_json(kubectl, "get", kind, "-n", namespace)["items"]:
            haystacks[f"{item['kind']} {namespace}/{item['metadata']['name']}"] = json.dumps(item)
    findings = scan(haystacks, needles)
    assert not findings, "secrets leaked:\n" + "\n".join(sorted(map(str, findings)))
