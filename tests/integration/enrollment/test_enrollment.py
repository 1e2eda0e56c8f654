"""Acceptance of enrollment: the three approval policies end to end with real processes, and the refusals a person
must be able to understand (reused single-use token, expired token, forged ServiceAccount token, foreign CN).
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from opsmgr.pki import build_csr, generate_private_key
from opsmgr.protocol import enrollment_pb2 as pb
from opsmgr.protocol.enrollment import METHOD, tokens_secret_name
from opsmgr.server.enrollment_tokens import mint_token
from tests.integration.enrollment.conftest import FOREIGN_SIGNER_TOKEN, GROUP, Enrollment

pytestmark = pytest.mark.timeout(300)
VM = "web01.contoso.test"


def _stored_identity(directory: Path) -> x509.Certificate:
    for name in ("tls.crt", "tls.key", "ca.crt"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert not (directory / "enroll.key").exists()
    return x509.load_pem_x509_certificate((directory / "tls.crt").read_bytes())


def _cn(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _reasons(env: Enrollment, name: str) -> list[str]:
    return [event["reason"] for event in env.events(name)]


def test_auto_approve_signs_at_once_and_the_agent_stores_its_identity_0600(enrollment: Enrollment,
                                                                          identity_dir: Path) -> None:
    enrollment.set_policy("AutoApprove")
    token = enrollment.create_token("--single-use")
    done = enrollment.enroll(VM, identity_dir, "--token", token)
    assert done.returncode == 0, done.stderr + enrollment.server.log_tail()
    assert f"enrolled: Agent {enrollment.namespace}/{VM}" in done.stdout
    certificate = _stored_identity(identity_dir)
    assert _cn(certificate) == VM
    agent = enrollment.agent(VM)
    assert agent is not None and agent["spec"]["placement"] == "Host"
    assert agent["status"]["certificate"]["serialNumber"] == format(certificate.serial_number, "x")
    assert {"EnrollmentRequested", "Enrolled"} <= set(_reasons(enrollment, VM))
    log = enrollment.server.log_path.read_text()
    assert token not in log and token.split(".")[1] not in log, "the token must never reach a log line"


def test_review_keeps_the_agent_pending_until_a_person_approves_it(enrollment: Enrollment, identity_dir: Path) -> None:
    token = enrollment.create_token()
    process = subprocess.Popen(enrollment.enroll_command(VM, identity_dir, "--token", token, wait="120s"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        agent = enrollment.wait_for(lambda: enrollment.agent(VM), "the pending Agent")
        assert agent["spec"]["placement"] == "Host"
        enrollment.wait_for(lambda: "PendingApproval" in _reasons(enrollment, VM), "the PendingApproval event")
        assert process.poll() is None, "the agent keeps asking while the Agent is pending"
        assert not (identity_dir / "tls.crt").exists()
        approved = enrollment.opsmgr("agents", "approve", VM, "-n", enrollment.namespace)
        assert approved.returncode == 0, approved.stderr
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "enrollment pending" in out and "enrolled: Agent" in out
    assert _cn(_stored_identity(identity_dir)) == VM


def test_reject_refuses_new_agents_without_spending_the_token(enrollment: Enrollment, identity_dir: Path) -> None:
    enrollment.set_policy("Reject")
    token = enrollment.create_token("--single-use")
    done = enrollment.enroll(VM, identity_dir, "--token", token)
    assert done.returncode == 3
    assert "enrollment refused (RejectedByPolicy)" in done.stderr and "spec.approval" in done.stderr
    assert enrollment.agent(VM) is None
    assert "RejectedByPolicy" in _reasons(enrollment, GROUP)
    listed = enrollment.opsmgr("token", "list", "--group", GROUP, "-n", enrollment.namespace)
    assert token.split(".")[0] in listed.stdout and token not in listed.stdout
    assert not (identity_dir / "tls.crt").exists()


def test_a_reused_single_use_token_is_refused(enrollment: Enrollment, identity_dir: Path) -> None:
    enrollment.set_policy("AutoApprove")
    token = enrollment.create_token("--single-use")
    assert enrollment.enroll(VM, identity_dir, "--token", token).returncode == 0
    again = enrollment.enroll("web02.contoso.test", identity_dir.parent / "second", "--token", token)
    assert again.returncode == 3
    assert "enrollment refused (TokenUsedUp)" in again.stderr and "single-use token" in again.stderr
    assert enrollment.agent("web02.contoso.test") is None


def test_an_expired_token_is_refused_with_its_expiry(enrollment: Enrollment, identity_dir: Path) -> None:
    enrollment.set_policy("AutoApprove")
    enrollment.create_token()  # the tokens Secret exists; add a record that expired an hour ago
    minted = mint_token(datetime.now(UTC) - timedelta(hours=2), timedelta(hours=1), None)
    encoded = base64.b64encode(minted.record.to_json().encode()).decode()
    enrollment.kubectl.run("patch", "secret", tokens_secret_name(GROUP), "--type=merge", "-p",
                           json.dumps({"data": {minted.record.token_id: encoded}}))
    done = enrollment.enroll(VM, identity_dir, "--token", minted.token)
    assert done.returncode == 3
    assert "enrollment refused (ExpiredToken)" in done.stderr and "expired at" in done.stderr
    assert enrollment.agent(VM) is None


def _pod_with_agent(enrollment: Enrollment, pod: str, fqdn: str) -> str:
    """A ServiceAccount, a Pod running as it, its Sidecar Agent; returns a Pod-bound token for audience opsmgr."""
    kubectl = enrollment.kubectl
    kubectl.run("create", "serviceaccount", "shop")
    created = kubectl.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
                              "spec": {"serviceAccountName": "shop",
                                       "containers": [{"name": "app", "image": "busybox"}]}})
    kubectl.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "Agent", "metadata": {"name": pod},
                    "spec": {"managementGroupRef": {"name": GROUP}, "fqdn": fqdn, "placement": "Sidecar"}})
    _, token = kubectl.run("create", "token", "shop", "--audience", "opsmgr", "--bound-object-kind", "Pod",
                           "--bound-object-name", pod, "--bound-object-uid", created["metadata"]["uid"])
    return token.strip()


def test_a_pod_enrolls_with_its_projected_service_account_token(enrollment: Enrollment, identity_dir: Path,
                                                                tmp_path: Path) -> None:
    enrollment.set_policy("AutoApprove")
    fqdn = "shop-web-1.shop.pod.cluster.local"
    token_file = tmp_path / "token"
    token_file.write_text(_pod_with_agent(enrollment, "shop-web-1", fqdn))
    done = enrollment.enroll(fqdn, identity_dir, "--service-account-token", str(token_file))
    assert done.returncode == 0, done.stderr + enrollment.server.log_tail()
    certificate = _stored_identity(identity_dir)
    assert _cn(certificate) == fqdn
    agent = enrollment.agent("shop-web-1")
    assert agent is not None
    assert agent["metadata"]["annotations"]["opsmgr.io/enrolled-serial"] == format(certificate.serial_number, "x")
    assert "Enrolled" in _reasons(enrollment, "shop-web-1")


def test_a_forged_service_account_token_is_refused(enrollment: Enrollment, identity_dir: Path,
                                                   tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(FOREIGN_SIGNER_TOKEN)
    done = enrollment.enroll("shop-web-1.shop.pod.cluster.local", identity_dir, "--service-account-token",
                             str(token_file))
    assert done.returncode == 3
    assert "enrollment refused (InvalidServiceAccountToken)" in done.stderr and "TokenReview" in done.stderr
    assert not (identity_dir / "tls.crt").exists()


def test_a_pod_asking_for_a_foreign_cn_is_refused(enrollment: Enrollment, identity_dir: Path, tmp_path: Path) -> None:
    enrollment.set_policy("AutoApprove")
    token_file = tmp_path / "token"
    token_file.write_text(_pod_with_agent(enrollment, "shop-web-2", "shop-web-2.shop.pod.cluster.local"))
    done = enrollment.enroll("db01.contoso.test", identity_dir, "--service-account-token", str(token_file))
    assert done.returncode == 3
    assert "enrollment refused (CNMismatch)" in done.stderr and "shop-web-2.shop.pod.cluster.local" in done.stderr
    assert "CNMismatch" in _reasons(enrollment, "shop-web-2")


def _call(enrollment: Enrollment, request: pb.EnrollRequest | bytes) -> Any:
    credentials = grpc.ssl_channel_credentials(root_certificates=enrollment.ca_file.read_bytes())
    options = [("grpc.ssl_target_name_override", enrollment.server_name)]
    with grpc.secure_channel(f"127.0.0.1:{enrollment.enrollment_port}", credentials, options=options) as channel:
        stub = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=pb.EnrollReply.FromString)
        return stub(request if isinstance(request, bytes) else request.SerializeToString(), timeout=30)


def test_a_vm_csr_for_a_foreign_cn_gets_nothing_and_keeps_its_token(enrollment: Enrollment) -> None:
    enrollment.set_policy("AutoApprove")
    token = enrollment.create_token("--single-use")
    csr = build_csr(generate_private_key(), "db01.contoso.test").public_bytes(Encoding.PEM)
    reply = _call(enrollment, pb.EnrollRequest(join_token=token, fqdn=VM, csr_pem=csr))
    assert (reply.outcome, reply.reason) == (pb.EnrollReply.REFUSED, "CNMismatch")
    assert not reply.certificate_pem and enrollment.agent(VM) is None
    listed = enrollment.opsmgr("token", "list", "--group", GROUP, "-n", enrollment.namespace)
    assert "    0 " in listed.stdout  # not spent on a request that failed validation


def test_bytes_that_are_not_an_enroll_request_are_refused_as_invalid_argument(enrollment: Enrollment) -> None:
    # Found by fuzzing: gRPC's own decoding answered UNKNOWN and logged a traceback at error level per request.
    with pytest.raises(grpc.RpcError) as raised:
        _call(enrollment, b"\xff\x00")
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "not an EnrollRequest" in error.details()
    assert not [line for line in enrollment.server.log_lines() if line["level"] == "error"]
    reply = _call(enrollment, pb.EnrollRequest(join_token="x", fqdn=VM))  # the endpoint answers the next one
    assert reply.outcome == pb.EnrollReply.REFUSED


def test_an_empty_service_account_token_is_refused_not_blamed_on_the_api_server(enrollment: Enrollment) -> None:
    # Found by fuzzing: TokenReview answered 400 and the agent heard UNAVAILABLE, "cannot reach the Kubernetes API".
    csr = build_csr(generate_private_key(), VM).public_bytes(Encoding.PEM)
    reply = _call(enrollment, pb.EnrollRequest(service_account_token="", csr_pem=csr))
    assert (reply.outcome, reply.reason) == (pb.EnrollReply.REFUSED, "InvalidServiceAccountToken")
    assert "empty" in reply.message
