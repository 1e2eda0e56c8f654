"""Certificate renewal over an agent's own stream: the TLS-verified holder of a valid certificate sends a CSR for
the same identity with a new key, and gets the new certificate and the group's trust bundle back on that stream.

Who may renew here (decided by `judge_renewal`, plain data in and out):
- only the agent itself, never a gateway on an agent's behalf: a relay that could obtain certificates for the
  agents behind it would turn one stolen gateway key into every agent's identity;
- only a Host agent (a VM that enrolled with a join token): an in-cluster agent's certificate lives in a Secret
  that the operator issues and renews, and two writers would fight over it;
- only an Agent that exists in the group and is Approved (deleted or rejected agents get nothing).

The old certificate is not revoked: it stays valid until it expires, as Operations Manager's do, so an agent that
could not store the new one (a full disk) is not locked out. The Agent's status.certificate names the new serial,
which is what the operator revokes when the Agent is deleted; the directory refuses a deleted Agent's old
certificate anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from opsmgr.api.agent import Placement
from opsmgr.api.common import parse_duration
from opsmgr.kubeio.kube import KubeError
from opsmgr.pki import CertificateError, approve_renewal, sign_csr, validate_csr
from opsmgr.pki.names import Identity, Role
from opsmgr.pki.pem import certificate_pem
from opsmgr.pki.revocation import RevocationSet
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.enrollment_cluster import EnrollmentCluster
from opsmgr.server.enrollment_rules import AgentFacts

log = logging.getLogger(__name__)
MAX_CSR_BYTES = 16 * 1024


@dataclass(frozen=True)
class RenewalRefusal:
    """`reason` is one CamelCase word (a metric label and the Event's reason), `message` says what to do."""

    reason: str
    message: str


def judge_renewal(identity: Identity, agent: str, facts: AgentFacts | None, *, group: str,
                  namespace: str) -> RenewalRefusal | None:
    """Whether the stream of `identity`, speaking for `agent`, may have a certificate signed for that agent."""
    if identity.role is not Role.AGENT or identity.name != agent:
        return RenewalRefusal("Relayed", f"{identity.role.value} {identity.name} asked to renew the certificate of "
                                         f"{agent}; only an agent renews its own. Fix: let the agent connect to a "
                                         "management server directly once its renewal is due, or enroll it again")
    if facts is None or facts.deleting:
        return RenewalRefusal("UnknownAgent", f"no Agent for {agent} in namespace {namespace} of group {group}. Fix: "
                                              "enroll the agent again")
    if facts.status_approval.value != "Approved":
        return RenewalRefusal("NotApproved", f"Agent {facts.ref} is {facts.status_approval.value}, not Approved")
    if facts.placement is not Placement.HOST:
        return RenewalRefusal("OperatorManaged", f"Agent {facts.ref} runs in the cluster ({facts.placement.value}); "
                                                 "the operator renews its certificate in its Secret. Fix: set "
                                                 "certificates.renew: false in the agent's configuration")
    return None


class RenewalRefused(Exception):
    def __init__(self, refusal: RenewalRefusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class CertificateRenewal:
    """Signs renewals with the group's CA (read through `cluster`) and records them on the Agent."""

    def __init__(self, cluster: EnrollmentCluster, revocations: Callable[[], RevocationSet]) -> None:
        self.cluster = cluster
        self.revocations = revocations

    async def renew(self, current: x509.Certificate, identity: Identity, agent: str, csr: bytes) -> pb.Renewal:
        """The new certificate and trust bundle, or RenewalRefused saying why; every outcome is an Event."""
        facts = await self.cluster.host_agent(agent)
        refusal = judge_renewal(identity, agent, facts, group=self.cluster.group_name,
                                namespace=self.cluster.namespace)
        if refusal is None and len(csr) > MAX_CSR_BYTES:
            refusal = RenewalRefusal("RequestTooLarge", f"the CSR has {len(csr)} bytes, more than {MAX_CSR_BYTES}")
        now = datetime.now(UTC)
        if refusal is None:
            try:
                validated = validate_csr(csr, identity)
                approval = approve_renewal(current, validated, self.revocations(), now)
            except CertificateError as error:
                refusal = RenewalRefusal(error.reason, str(error))
        if refusal is not None:
            await self._report(facts, True, refusal.reason, f"certificate renewal refused: {refusal.message}")
            raise RenewalRefused(refusal)
        assert facts is not None
        group = await self.cluster.group()
        issuer = await self.cluster.issuer(group, now)
        validity = parse_duration(group.spec.certificates.validity)
        certificate = await asyncio.to_thread(sign_csr, issuer.ca, validated, approval, now, validity=validity)
        serial = format(certificate.serial_number, "x")
        await self.cluster.record_certificate(facts, serial, certificate.not_valid_after_utc)
        await self._report(facts, False, "CertificateRenewed",
                           f"certificate {serial} issued for {agent} over its stream, replacing "
                           f"{current.serial_number:x}; valid until {certificate.not_valid_after_utc.isoformat()}")
        return pb.Renewal(certificate_pem=certificate_pem(certificate), trust_bundle_pem=issuer.trust_pem)

    async def _report(self, facts: AgentFacts | None, warning: bool, reason: str, message: str) -> None:
        log.log(logging.WARNING if warning else logging.INFO, "certificate renewal " + reason, extra={"fields": {
            "reason": reason, "message": message, "agent": facts.ref if facts else None}})
        if facts is None:
            return
        try:
            await self.cluster.event(kind="Agent", namespace=facts.namespace, name=facts.name, uid=facts.uid,
                                     warning=warning, reason=reason, message=message)
        except KubeError as error:
            log.warning("renewal event not recorded", extra={"fields": {"reason": reason, "error": str(error)}})

