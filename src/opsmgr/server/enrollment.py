"""The enrollment endpoint (default TCP 5724, server-only TLS): an agent without a certificate proves itself with a
join token (VMs) or its projected ServiceAccount token (pods, node agents), sends a CSR, and gets its certificate
now (approved), later (Pending under Review) or never (refused, with the reason and the fix).

Gather with `EnrollmentCluster`, decide with `enrollment_rules` and `enrollment_tokens`, then act: every
enrollment, approval and refusal becomes an Event on the Agent (on the ManagementGroup when no Agent is known)
and one log line. Tokens, CSRs and certificates never reach a log line or an Event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError
from grpc import aio

from opsmgr.api import ManagementGroup
from opsmgr.api.common import parse_duration
from opsmgr.kubeio.kube import KubeError
from opsmgr.pki import Approval, CertificateError, Identity, Role, ValidatedCsr, sign_csr, validate_csr
from opsmgr.pki.names import normalize_fqdn
from opsmgr.pki.pem import certificate_pem, load_csr
from opsmgr.protocol import enrollment_pb2 as pb
from opsmgr.protocol.enrollment import ENROLLED_SERIAL_ANNOTATION, ENROLLMENT_KEY_ANNOTATION, SERVICE, TOKEN_AUDIENCE
from opsmgr.server.enrollment_cluster import EnrollmentCluster
from opsmgr.server.enrollment_rules import (
    Action,
    AgentFacts,
    Decision,
    PodClaim,
    check_pod,
    choose_agent,
    decide_host,
    decide_pod,
    judge_review,
    key_fingerprint,
    sidecar_names,
)

log = logging.getLogger(__name__)
MAX_TOKEN_CHARS = 16 * 1024
MAX_CSR_BYTES = 16 * 1024


@dataclass(frozen=True)
class Subject:
    """Where an outcome is reported: the Agent when known, else the ManagementGroup."""

    kind: str
    namespace: str
    name: str
    uid: str = ""


class EnrollmentService:
    """The Enroll RPC of one management server."""

    def __init__(self, cluster: EnrollmentCluster, *, retry_after_seconds: int) -> None:
        self.cluster = cluster
        self.retry_after_seconds = retry_after_seconds

    def handler(self) -> grpc.GenericRpcHandler:
        # Raw bytes in, decoded by `enroll`: gRPC's own decoding answers garbage with UNKNOWN and an error traceback.
        method = grpc.unary_unary_rpc_method_handler(self.enroll, request_deserializer=None,
                                                     response_serializer=pb.EnrollReply.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, {"Enroll": method})

    async def enroll(self, raw: bytes, context: aio.ServicerContext[Any, Any]) -> pb.EnrollReply:
        try:
            request = pb.EnrollRequest.FromString(raw)
        except DecodeError as error:
            log.warning("enrollment request malformed", extra={"fields": {"peer": context.peer(), "error": str(error)}})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not an EnrollRequest ({error}). Fix: use `opsmgr enroll` of a "
                                "matching release")
            raise  # abort raises; this keeps mypy sure the function never falls through
        try:
            return await self._enroll(request, context.peer())
        except (KubeError, OSError, TimeoutError) as error:
            # The API server is unreachable or refused us: nothing was decided, the agent asks again.
            log.warning("enrollment deferred: Kubernetes API unavailable", extra={"fields": {"error": str(error)}})
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"the management server cannot reach the Kubernetes API ({error}); try again")
            raise  # abort raises; this keeps mypy sure the function never falls through

    async def _enroll(self, request: pb.EnrollRequest, peer: str) -> pb.EnrollReply:
        proof = request.WhichOneof("proof")
        group_subject = Subject("ManagementGroup", self.cluster.namespace, self.cluster.group_name)
        if len(request.csr_pem) > MAX_CSR_BYTES or len(request.join_token or request.service_account_token) > \
                MAX_TOKEN_CHARS:
            return await self._refuse(group_subject, "RequestTooLarge", "the request is too large", peer, proof)
        try:
            csr = load_csr(bytes(request.csr_pem), "EnrollRequest.csr_pem")
        except CertificateError as error:
            return await self._refuse(group_subject, error.reason, str(error), peer, proof)
        if proof == "service_account_token" and not request.service_account_token.strip():
            # TokenReview answers 400 to an empty token: the agent's error, not an unreachable API server.
            return await self._refuse(group_subject, "InvalidServiceAccountToken",
                                      "the ServiceAccount token is empty. Fix: present the projected token of the pod "
                                      f"(a serviceAccountToken volume with audience {TOKEN_AUDIENCE!r})", peer, proof)
        if proof == "service_account_token":
            return await self._enroll_pod(request.service_account_token, csr, peer)
        return await self._enroll_host(request, csr, peer)

    # --- VMs: join token, then polls with the same key ---

    async def _enroll_host(self, request: pb.EnrollRequest, csr: x509.CertificateSigningRequest,
                           peer: str) -> pb.EnrollReply:
        cluster = self.cluster
        group_subject = Subject("ManagementGroup", cluster.namespace, cluster.group_name)
        token = request.join_token if request.WhichOneof("proof") == "join_token" else ""
        proof = "join_token" if token else "poll"
        try:
            fqdn = normalize_fqdn(request.fqdn, "EnrollRequest.fqdn")
            identity = Identity.of(cluster.group_name, Role.AGENT, fqdn)
            validated = validate_csr(csr, identity)
        except CertificateError as error:
            # Nothing is issued for a request that fails validation, and its token is not spent.
            return await self._refuse(group_subject, error.reason, str(error), peer, proof, fqdn=request.fqdn)
        fingerprint = key_fingerprint(validated.public_key)
        now = datetime.now(UTC)
        group = await cluster.group()
        policy = group.spec.approval_policy
        agent = await cluster.host_agent(fqdn)
        decision = decide_host(policy, agent, fingerprint, group=cluster.group_name, token_presented=bool(token),
                               key_annotation=ENROLLMENT_KEY_ANNOTATION)
        subject = _subject(agent) or group_subject
        if decision.action is Action.REFUSE:
            return await self._refuse(subject, decision.reason, decision.message, peer, proof, fqdn=fqdn)
        token_id = ""
        if decision.use_token:
            verdict = await cluster.spend_token(token, now)
            token_id = verdict.token_id
            if not verdict.accepted:
                return await self._refuse(subject, verdict.reason, verdict.message, peer, proof, fqdn=fqdn,
                                          token_id=token_id)
        if decision.action is Action.CREATE:
            agent = await cluster.create_host_agent(fqdn, fingerprint)
            if agent is None:
                return await self._refuse(group_subject, "AgentNameTaken",
                                          f"an Agent named {fqdn} already exists for another FQDN or group. Fix: "
                                          "rename or delete it, then enroll again", peer, proof, fqdn=fqdn)
            await self._report(_agent_subject(agent), False, "EnrollmentRequested",
                               f"enrolled with join token {token_id} from {peer}; management group policy is "
                               f"{policy.value}", fqdn=fqdn, token_id=token_id)
            decision = decide_host(policy, agent, fingerprint, group=cluster.group_name, token_presented=False,
                                   key_annotation=ENROLLMENT_KEY_ANNOTATION)
        elif decision.bind_key:
            assert agent is not None
            if not await cluster.bind_key(agent, fingerprint):
                return await self._refuse(_agent_subject(agent), "KeyMismatch",
                                          f"Agent {agent.ref} was just enrolled with another key. Fix: if that was "
                                          "not this machine, delete the Agent and enroll again", peer, proof,
                                          fqdn=fqdn)
            await self._report(_agent_subject(agent), False, "EnrollmentRequested",
                               f"enrolled with join token {token_id} from {peer}", fqdn=fqdn, token_id=token_id)
        assert agent is not None
        return await self._settle(agent, decision, validated=validated, identity=identity, group=group, peer=peer,
                                  proof=proof, announce_wait=bool(token))

    # --- pods and node agents: projected ServiceAccount token ---

    async def _enroll_pod(self, token: str, csr: x509.CertificateSigningRequest, peer: str) -> pb.EnrollReply:
        cluster = self.cluster
        group_subject = Subject("ManagementGroup", cluster.namespace, cluster.group_name)
        proof = "service_account_token"
        review = judge_review(await cluster.review(token))
        if review.claim is None:
            return await self._refuse(group_subject, review.reason, review.message, peer, proof)
        try:
            pod = await cluster.pod(review.claim.namespace, review.claim.name)
        except KubeError as error:
            if error.status != 403:
                raise
            return await self._refuse(group_subject, "ForbiddenNamespace", _outside(review.claim, cluster), peer,
                                      proof)
        checked = check_pod(review.claim, pod)
        if checked.claim is None:
            return await self._refuse(group_subject, checked.reason, checked.message, peer, proof)
        claim = checked.claim
        agent = await self._agent_of(claim)
        group = await cluster.group()
        decision = decide_pod(group.spec.approval_policy, agent, claim, group=cluster.group_name,
                              group_namespace=cluster.namespace)
        subject = _subject(agent) or group_subject
        if decision.action is Action.REFUSE or agent is None:
            return await self._refuse(subject, decision.reason, decision.message, peer, proof, pod=claim.name)
        identity = Identity.of(cluster.group_name, Role.AGENT, agent.fqdn)
        try:
            validated = validate_csr(csr, identity)
        except CertificateError as error:
            return await self._refuse(subject, error.reason, f"Pod {claim.namespace}/{claim.name}: {error}", peer,
                                      proof, pod=claim.name)
        return await self._settle(agent, decision, validated=validated, identity=identity, group=group, peer=peer,
                                  proof=proof, announce_wait=True)

    async def _agent_of(self, claim: PodClaim) -> AgentFacts | None:
        found = [agent for name in sidecar_names(claim)
                 if (agent := await self.cluster.agent(claim.namespace, name)) is not None]
        if claim.node and claim.namespace == self.cluster.namespace:
            found += await self.cluster.node_agents(claim.node)
            if (named := await self.cluster.agent(claim.namespace, claim.node)) is not None:
                found.append(named)
        return choose_agent(claim, found, self.cluster.namespace)

    # --- outcomes ---

    async def _settle(self, agent: AgentFacts, decision: Decision, *, validated: ValidatedCsr, identity: Identity,
                      group: ManagementGroup, peer: str, proof: str, announce_wait: bool) -> pb.EnrollReply:
        subject = _agent_subject(agent)
        if decision.action is Action.REFUSE:
            return await self._refuse(subject, decision.reason, decision.message, peer, proof, fqdn=agent.fqdn)
        if decision.action is Action.WAIT:
            if announce_wait:  # polls repeat every few seconds: only the first request is worth an Event
                await self._report(subject, False, decision.reason, decision.message, fqdn=agent.fqdn)
            log.debug("enrollment pending", extra={"fields": {"agent": agent.ref, "peer": peer}})
            return pb.EnrollReply(outcome=pb.EnrollReply.PENDING, agent=agent.ref, reason=decision.reason,
                                  message=decision.message, retry_after_seconds=self.retry_after_seconds)
        now = datetime.now(UTC)
        issuer = await self.cluster.issuer(group, now)
        approval = Approval(identity, f"{decision.reason} ({proof})", now)
        validity = parse_duration(group.spec.certificates.validity)
        certificate = await asyncio.to_thread(sign_csr, issuer.ca, validated, approval, now, validity=validity)
        serial = format(certificate.serial_number, "x")
        if proof == "service_account_token":
            # The operator owns status.certificate of in-cluster agents (its own Secret); ours goes beside it.
            await self.cluster.annotate(agent, {ENROLLED_SERIAL_ANNOTATION: serial})
        else:
            await self.cluster.record_certificate(agent, serial, certificate.not_valid_after_utc)
        await self._report(subject, False, "Enrolled",
                            f"certificate {serial} issued for {agent.fqdn} ({proof}), valid until "
                            f"{certificate.not_valid_after_utc.isoformat()}", fqdn=agent.fqdn, serial=serial)
        return pb.EnrollReply(outcome=pb.EnrollReply.ISSUED, certificate_pem=certificate_pem(certificate),
                              trust_bundle_pem=issuer.trust_pem, agent=agent.ref, reason="Enrolled",
                              message=f"certificate {serial} issued for {agent.fqdn}")

    async def _refuse(self, subject: Subject, reason: str, message: str, peer: str, proof: str | None,
                      **fields: str) -> pb.EnrollReply:
        await self._report(subject, True, reason, message, peer=peer, proof=proof or "none", **fields)
        return pb.EnrollReply(outcome=pb.EnrollReply.REFUSED, reason=reason, message=message,
                              agent=f"{subject.namespace}/{subject.name}" if subject.kind == "Agent" else "")

    async def _report(self, subject: Subject, warning: bool, reason: str, message: str, **fields: str) -> None:
        log.log(logging.WARNING if warning else logging.INFO, f"enrollment {reason}", extra={"fields": {
            "reason": reason, "message": message, "on": f"{subject.kind} {subject.namespace}/{subject.name}",
            **fields}})
        try:
            await self.cluster.event(kind=subject.kind, namespace=subject.namespace, name=subject.name,
                                     uid=subject.uid, warning=warning, reason=reason, message=message)
        except KubeError as error:
            log.warning("enrollment event not recorded", extra={"fields": {"reason": reason, "error": str(error)}})


def _agent_subject(agent: AgentFacts) -> Subject:
    return Subject("Agent", agent.namespace, agent.name, agent.uid)


def _subject(agent: AgentFacts | None) -> Subject | None:
    return None if agent is None else _agent_subject(agent)


def _outside(claim: PodClaim, cluster: EnrollmentCluster) -> str:
    return (f"Pod {claim.namespace}/{claim.name} is outside namespace {cluster.namespace}, where the servers of "
            f"management group {cluster.group_name} may read Pods and Agents. Fix: run the agent's Pod and its "
            f"Agent in namespace {cluster.namespace}")
