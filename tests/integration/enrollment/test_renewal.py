"""Certificate renewal over the agent's own stream, end to end: a VM enrolled with a join token, then the real
`opsmgr agent` renews before expiry without losing its stream or a heartbeat, the Agent records the new serial,
and the renewed certificate is the one that connects once the old one is revoked.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.integration.agent.datapath.conftest import AgentProcess
from tests.integration.enrollment.conftest import Enrollment
from tests.integration.server.client import Credentials

pytestmark = pytest.mark.timeout(300)
VM = "app07.contoso.test"


def _certificate(identity: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((identity / "tls.crt").read_bytes())


def _public_key(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _heartbeats(enrollment: Enrollment) -> int:
    found = re.search(r"^opsmgr_heartbeat_delay_seconds_count (\S+)$", enrollment.server.metrics(), re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def _streams_opened(enrollment: Enrollment) -> int:
    return sum(1 for line in enrollment.server.log_lines()
               if line.get("msg") == "agent connected" and line.get("agent") == VM)


@pytest.fixture
def agent_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-renewing-agent-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _agent(enrollment: Enrollment, directory: Path, identity: Path) -> AgentProcess:
    return AgentProcess(directory, {
        "fqdn": VM,
        "servers": {"primary": f"127.0.0.1:{enrollment.server.agent_port}", "tls_server_name": enrollment.server_name},
        # The group issues for 720 h; renewing 700 days before the end makes the renewal due at once.
        "certificates": {"directory": str(identity), "renew_before_days": 700},
        "queue": {"path": str(directory / "queue.sqlite"), "limit_bytes": 10 * 1024 * 1024},
        "connection": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0, "heartbeat_seconds": 1.0},
        "health": {"send_queue_check_seconds": 3600},
        "refuse_on_management_host": False,  # server and agent share this machine in tests
    })


def test_an_enrolled_vm_renews_over_its_stream_without_losing_it_and_then_connects_with_the_new_certificate(
        enrollment: Enrollment, agent_dir: Path) -> None:
    enrollment.set_policy("AutoApprove")
    identity = agent_dir / "identity"
    done = enrollment.enroll(VM, identity, "--token", enrollment.create_token("--single-use"))
    assert done.returncode == 0, done.stderr + enrollment.server.log_tail()
    # The operator would write the approval the policy decided; this fixture runs no operator.
    enrollment.kubectl.run("patch", "agent", VM, "--subresource=status", "--type=merge", "-p",
                           json.dumps({"status": {"approval": "Approved"}}))
    enrolled = _certificate(identity)
    agent = _agent(enrollment, agent_dir, identity)
    agent.start()
    try:
        agent.wait_for_log("certificate renewed; the next connection uses it", timeout=60)
        renewed = _certificate(identity)
        assert renewed.serial_number != enrolled.serial_number
        assert renewed.subject == enrolled.subject
        assert _public_key(renewed) != _public_key(enrolled), "a renewal must come with a new key"
        serial = format(renewed.serial_number, "x")
        record = enrollment.wait_for(lambda: (enrollment.agent(VM) or {}).get("status", {}).get("certificate"),
                                     "status.certificate")
        assert record["serialNumber"] == serial
        assert "CertificateRenewed" in [event["reason"] for event in enrollment.events(VM)]

        # The stream that carried the renewal goes on: heartbeats keep arriving on it, no reconnect.
        beats = _heartbeats(enrollment)
        enrollment.wait_for(lambda: _heartbeats(enrollment) >= beats + 3, "three more heartbeats")
        assert _streams_opened(enrollment) == 1
        assert "lost the stream" not in agent.log() and "renewal refused" not in agent.log()

        # With the enrolled certificate revoked, only the renewed one can connect: and it does.
        enrollment.server.revoke(Credentials(b"", enrolled.public_bytes(Encoding.PEM), b""))
        agent.wait_for_log("lost the stream", timeout=30)  # the revocation closed the old certificate's stream
        enrollment.wait_for(lambda: _streams_opened(enrollment) >= 2, "the agent back with its renewed certificate")
        beats = _heartbeats(enrollment)
        enrollment.wait_for(lambda: _heartbeats(enrollment) >= beats + 2, "heartbeats on the new stream")
    finally:
        agent.stop()
    assert "Traceback" not in agent.log(), agent.log()[-3000:]
    assert not [line for line in enrollment.server.log_lines() if line["level"] == "error"]
