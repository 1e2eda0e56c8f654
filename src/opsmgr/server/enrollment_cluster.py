"""The enrollment endpoint's door to the API server: read the group, its CA, its join tokens, Agents and Pods; create
a VM's Agent, count a token's use, record what was issued, ask TokenReview, post Events. No decisions here.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio.client.exceptions import ApiException

from opsmgr.api import ManagementGroup
from opsmgr.api.agent import Placement
from opsmgr.api.common import GROUP, VERSION
from opsmgr.kubeio.kube import Kube, KubeError, Ref
from opsmgr.pki import CertificateAuthority, CertificateError, Check, TrustBundle, import_ca
from opsmgr.protocol.enrollment import ENROLLMENT_KEY_ANNOTATION, TOKEN_AUDIENCE, tokens_secret_name
from opsmgr.server.enrollment_rules import NODE_LABEL, AgentFacts
from opsmgr.server.enrollment_tokens import JoinTokenRecord, TokenVerdict, judge_token, parse_records

AGENTS_API = f"{GROUP}/{VERSION}"
CA_CACHE_SECONDS = 30.0  # a burst of enrollments reads the CA Secret once; a renewed CA is seen within this
TOKEN_UPDATE_ATTEMPTS = 8
COMPONENT = "opsmgr-server"


@dataclass(frozen=True)
class Issuer:
    ca: CertificateAuthority
    trust_pem: bytes


def _decode(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in ((secret or {}).get("data") or {}).items()}


class EnrollmentCluster:
    """Everything enrollment reads or writes in the group's namespace (and TokenReview, cluster-wide)."""

    def __init__(self, kube: Kube, *, namespace: str, group: str, ca_secret: str | None, server: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.group_name = group
        self.ca_secret = ca_secret or f"{group}-ca"
        self.server = server
        self._issuer: tuple[float, Issuer] | None = None

    async def group(self) -> ManagementGroup:
        body = await self.kube.get(AGENTS_API, "ManagementGroup", self.namespace, self.group_name)
        if body is None:
            raise KubeError(404, "get", f"ManagementGroup {self.namespace}/{self.group_name}", "not found")
        return ManagementGroup.from_body(body)

    async def issuer(self, group: ManagementGroup, now: datetime) -> Issuer:
        """The group's CA from its Secret (the imported one when the group names one), briefly cached."""
        if self._issuer is not None and time.monotonic() - self._issuer[0] < CA_CACHE_SECONDS:
            return self._issuer[1]
        imported = group.spec.certificates.authority.imported
        name = imported.secret.name if imported is not None else self.ca_secret
        data = _decode(await self.kube.get("v1", "Secret", self.namespace, name))
        if "tls.crt" not in data or "tls.key" not in data:
            raise CertificateError(Check.UNREADABLE, f"CA Secret {self.namespace}/{name}", "(missing)",
                                   "does not exist or lacks tls.crt/tls.key",
                                   "wait until the ManagementGroup reports CertificatesReady")
        ca = await asyncio.to_thread(import_ca, data["tls.crt"], data["tls.key"], now, field=f"CA Secret {name}")
        trust = data.get("ca.crt") or TrustBundle.of(ca).pem()
        issuer = Issuer(ca, trust)
        self._issuer = (time.monotonic(), issuer)
        return issuer

    async def spend_token(self, presented: str, now: datetime) -> TokenVerdict:
        """Judge the token and count its use, atomically: the update is guarded by the Secret's resourceVersion,
        so two enrollments racing for the last use of a token cannot both win.
        """
        name = tokens_secret_name(self.group_name)
        for _ in range(TOKEN_UPDATE_ATTEMPTS):
            secret = await self.kube.get("v1", "Secret", self.namespace, name)
            verdict = judge_token(presented, parse_records(_decode(secret)), self.group_name, now)
            if not verdict.accepted or secret is None or verdict.record is None:
                return verdict
            used: JoinTokenRecord = verdict.record.used_once_more()
            patch = {"metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
                     "data": {used.token_id: base64.b64encode(used.to_json().encode()).decode()}}
            try:
                await self.kube.merge_patch(Ref("v1", "Secret", self.namespace, name), patch)
            except KubeError as error:
                if error.conflict:
                    continue  # someone else used a token meanwhile: judge again on the fresh count
                raise
            return verdict
        raise KubeError(409, "update", f"Secret {self.namespace}/{name}", "kept changing; try again")

    async def host_agent(self, fqdn: str) -> AgentFacts | None:
        """The group's Agent for this FQDN in the group's namespace, whatever its name."""
        for body in await self.kube.list(AGENTS_API, "Agent", self.namespace):
            facts = AgentFacts.of(body)
            if facts.fqdn == fqdn and facts.group == self.group_name and facts.group_namespace == self.namespace:
                return facts
        return None

    async def agent(self, namespace: str, name: str) -> AgentFacts | None:
        body = await self.kube.get(AGENTS_API, "Agent", namespace, name)
        return None if body is None else AgentFacts.of(body)

    async def node_agents(self, node: str) -> list[AgentFacts]:
        """The group's Agents labelled with this node (the operator's node agents)."""
        listed = await self.kube.list(AGENTS_API, "Agent", self.namespace, {NODE_LABEL: node})
        return [AgentFacts.of(body) for body in listed]

    async def create_host_agent(self, fqdn: str, fingerprint: str) -> AgentFacts | None:
        """A VM's Agent (placement Host, named as its FQDN) bound to its key; None when the name is taken."""
        manifest = {
            "apiVersion": AGENTS_API, "kind": "Agent",
            "metadata": {"name": fqdn, "namespace": self.namespace,
                         "annotations": {ENROLLMENT_KEY_ANNOTATION: fingerprint},
                         "labels": {"opsmgr.io/enrolled-by": "join-token"}},
            "spec": {"managementGroupRef": {"name": self.group_name}, "fqdn": fqdn,
                     "placement": Placement.HOST.value},
        }
        created = await self.kube.create(manifest)
        return None if created is None else AgentFacts.of(created)

    async def bind_key(self, agent: AgentFacts, fingerprint: str, resource_version: str | None = None) -> bool:
        """Record the enrolling key on an Agent a person created; False when another key got there first."""
        body = await self.kube.get(AGENTS_API, "Agent", agent.namespace, agent.name)
        if body is None:
            return False
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ENROLLMENT_KEY_ANNOTATION) not in (None, fingerprint):
            return False
        patch = {"metadata": {"resourceVersion": resource_version or body["metadata"]["resourceVersion"],
                              "annotations": {ENROLLMENT_KEY_ANNOTATION: fingerprint}}}
        try:
            await self.kube.merge_patch(Ref(AGENTS_API, "Agent", agent.namespace, agent.name), patch)
        except KubeError as error:
            if error.conflict:
                return False
            raise
        return True

    async def record_certificate(self, agent: AgentFacts, serial_hex: str, not_after: datetime) -> None:
        """A VM's certificate in status.certificate, where the operator revokes it from when the Agent goes."""
        await self.kube.merge_patch(Ref(AGENTS_API, "Agent", agent.namespace, agent.name),
                                    {"status": {"certificate": {"serialNumber": serial_hex,
                                                                "notAfter": not_after.isoformat()}}},
                                    subresource="status")

    async def annotate(self, agent: AgentFacts, annotations: Mapping[str, str]) -> None:
        await self.kube.merge_patch(Ref(AGENTS_API, "Agent", agent.namespace, agent.name),
                                    {"metadata": {"annotations": dict(annotations)}})

    async def review(self, token: str) -> dict[str, Any]:
        """TokenReview of a ServiceAccount token for our audience; its status (authenticated, user, audiences)."""
        body = kube_client.V1TokenReview(spec=kube_client.V1TokenReviewSpec(token=token, audiences=[TOKEN_AUDIENCE]))
        try:
            reply = await kube_client.AuthenticationV1Api(self.kube.api).create_token_review(body)
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), "create", "TokenReview", str(exc.reason)) from None
        status = reply.status
        user = status.user
        return {"authenticated": bool(status.authenticated), "error": status.error,
                "audiences": list(status.audiences or []),
                "user": {"username": user.username if user else "", "extra": dict(user.extra or {}) if user else {}}}

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get("v1", "Pod", namespace, name)

    async def event(self, *, kind: str, namespace: str, name: str, uid: str | None, warning: bool, reason: str,
                    message: str) -> None:
        """A Kubernetes Event on the Agent (or the ManagementGroup when no Agent is known); best effort."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": AGENTS_API, "kind": kind, "namespace": namespace, "name": name}
        if uid:
            involved["uid"] = uid
        manifest = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name[:200]}.", "namespace": namespace},
            "involvedObject": involved, "type": "Warning" if warning else "Normal", "reason": reason,
            "message": message[:1024], "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": COMPONENT, "host": self.server},
            "reportingComponent": COMPONENT, "reportingInstance": self.server[:128],
        }
        await self.kube.create(manifest)
