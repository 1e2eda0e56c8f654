"""The decisions of the enrollment endpoint, pure: which Agent a request is for, whether it may have a certificate
now, later or never, and what a TokenReview proves. `enrollment.py` gathers the facts and acts on the answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from opsmgr.api.agent import Approval, Placement
from opsmgr.api.management_group import ApprovalPolicy
from opsmgr.pki.keys import PublicKey
from opsmgr.protocol.enrollment import TOKEN_AUDIENCE

APPROVAL_ANNOTATION = "opsmgr.io/approval"  # the operator's: a person's decision outranks the policy
AGENT_ANNOTATION = "opsmgr.io/agent"  # on an injected pod: the name of its Agent (the operator's webhook sets it)
NODE_LABEL = "opsmgr.io/node"  # on a node's Agent: the node it runs on
POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
POD_UID_CLAIM = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


class Action(StrEnum):
    REFUSE = "Refuse"
    CREATE = "Create"  # no Agent yet: create it (placement Host), then judge again
    WAIT = "Wait"      # Pending: the agent asks again later
    SIGN = "Sign"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    message: str
    bind_key: bool = False  # record this request's key on the Agent (first use of a join token)
    use_token: bool = False  # the join token is needed (and counted) for this step


def key_fingerprint(key: PublicKey) -> str:
    """`sha256:<hex>` of the DER SubjectPublicKeyInfo: names a key without revealing anything secret."""
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return f"sha256:{hashlib.sha256(der).hexdigest()}"


@dataclass(frozen=True)
class AgentFacts:
    """What enrollment needs to know about an existing Agent."""

    namespace: str
    name: str
    placement: Placement
    group: str
    group_namespace: str
    fqdn: str
    status_approval: Approval
    annotations: Mapping[str, str]
    deleting: bool = False
    uid: str = ""
    owner_uids: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> AgentFacts:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        reference = spec.get("managementGroupRef") or {}
        namespace = str(meta.get("namespace") or "")
        try:
            approval = Approval((body.get("status") or {}).get("approval") or Approval.PENDING.value)
        except ValueError:
            approval = Approval.PENDING
        return cls(namespace=namespace, name=str(meta.get("name") or ""),
                   placement=Placement(str(spec.get("placement"))), group=str(reference.get("name") or ""),
                   group_namespace=str(reference.get("namespace") or namespace),
                   fqdn=str(spec.get("fqdn") or ""), status_approval=approval,
                   annotations=dict(meta.get("annotations") or {}), deleting=bool(meta.get("deletionTimestamp")),
                   uid=str(meta.get("uid") or ""),
                   owner_uids=frozenset(str(o.get("uid")) for o in meta.get("ownerReferences") or []),
                   labels=dict(meta.get("labels") or {}))


def effective_approval(policy: ApprovalPolicy, annotations: Mapping[str, str], status: Approval) -> Approval:
    """The approval the operator will write, known now: a person's annotation, a standing decision, the policy."""
    requested = annotations.get(APPROVAL_ANNOTATION)
    if requested in (Approval.APPROVED.value, Approval.REJECTED.value):
        return Approval(requested)
    if status is not Approval.PENDING:
        return status
    return {ApprovalPolicy.AUTO_APPROVE: Approval.APPROVED, ApprovalPolicy.REJECT: Approval.REJECTED,
            ApprovalPolicy.REVIEW: Approval.PENDING}[policy]


def _by_approval(agent: AgentFacts, policy: ApprovalPolicy, **flags: bool) -> Decision:
    approval = effective_approval(policy, agent.annotations, agent.status_approval)
    if approval is Approval.APPROVED:
        return Decision(Action.SIGN, "Enrolled", f"Agent {agent.ref} is approved; certificate issued", **flags)
    if approval is Approval.REJECTED:
        return Decision(Action.REFUSE, "Rejected",
                        f"Agent {agent.ref} is Rejected. Fix: a person approves it with `opsmgr agents approve "
                        f"{agent.name} -n {agent.namespace}` (or kubectl annotate agent {agent.name} "
                        f"{APPROVAL_ANNOTATION}=Approved), then enroll again", **flags)
    return Decision(Action.WAIT, "PendingApproval",
                    f"Agent {agent.ref} waits for a person to approve it: `opsmgr agents approve {agent.name} -n "
                    f"{agent.namespace}` (or kubectl annotate agent {agent.name} {APPROVAL_ANNOTATION}=Approved)",
                    **flags)


def decide_host(policy: ApprovalPolicy, agent: AgentFacts | None, fingerprint: str, *, group: str,
                token_presented: bool, key_annotation: str) -> Decision:
    """A VM's request (join token, or a poll with the key it enrolled with) for the Agent of its FQDN."""
    if agent is None:
        if not token_presented:
            return Decision(Action.REFUSE, "NotEnrolled",
                            "no Agent for this FQDN was enrolled with this key. Fix: run `opsmgr enroll` with --token")
        if policy is ApprovalPolicy.REJECT:
            return Decision(Action.REFUSE, "RejectedByPolicy",
                            f"management group {group} rejects new agents (spec.approval: Reject). Fix: set "
                            "spec.approval to Review or AutoApprove, or create the Agent and approve it first")
        return Decision(Action.CREATE, "Enrolling", "creating the Agent", use_token=True)
    return _decide_existing_host(policy, agent, fingerprint, token_presented=token_presented,
                                 key_annotation=key_annotation)


def _decide_existing_host(policy: ApprovalPolicy, agent: AgentFacts, fingerprint: str, *, token_presented: bool,
                          key_annotation: str) -> Decision:
    if agent.placement is not Placement.HOST:
        return Decision(Action.REFUSE, "NotAHost",
                        f"Agent {agent.ref} has placement {agent.placement.value}: pods and node agents enroll with "
                        "their ServiceAccount token, not a join token. Fix: use another FQDN for this machine")
    if agent.deleting:
        return Decision(Action.REFUSE, "AgentDeleting",
                        f"Agent {agent.ref} is being deleted. Fix: wait until it is gone, then enroll again")
    return _decide_by_key(policy, agent, fingerprint, token_presented=token_presented,
                          recorded=agent.annotations.get(key_annotation))


def _decide_by_key(policy: ApprovalPolicy, agent: AgentFacts, fingerprint: str, *, token_presented: bool,
                   recorded: str | None) -> Decision:
    if recorded is not None and recorded != fingerprint:
        return Decision(Action.REFUSE, "KeyMismatch",
                        f"Agent {agent.ref} was enrolled with another key. Fix: if this machine was reinstalled, "
                        f"delete the Agent (kubectl delete agent {agent.name} -n {agent.namespace}; its certificate "
                        "is revoked) and enroll again; otherwise use this machine's own FQDN")
    if recorded is None:
        if not token_presented:
            return Decision(Action.REFUSE, "NotEnrolled",
                            f"Agent {agent.ref} has not been enrolled yet. Fix: run `opsmgr enroll` with --token")
        if effective_approval(policy, agent.annotations, agent.status_approval) is Approval.REJECTED:
            return _by_approval(agent, policy)  # refused before the token is spent
        return _by_approval(agent, policy, bind_key=True, use_token=True)
    return _by_approval(agent, policy)


def decide_pod(policy: ApprovalPolicy, agent: AgentFacts | None, pod: PodClaim, *, group: str,
               group_namespace: str) -> Decision:
    """A pod or node agent's request for the Agent its Pod maps to (`choose_agent`)."""
    if agent is None:
        node = f", or run it in namespace {group_namespace} for the Agent of node {pod.node}" if pod.node else ""
        return Decision(Action.REFUSE, "NoAgentForPod",
                        f"no Agent for Pod {pod.namespace}/{pod.name}. Fix: create an Agent named {pod.name} "
                        f"(placement Sidecar) in namespace {pod.namespace}{node} with managementGroupRef {group}")
    if (agent.group, agent.group_namespace) != (group, group_namespace):
        return Decision(Action.REFUSE, "WrongGroup",
                        f"Agent {agent.ref} belongs to management group {agent.group_namespace}/{agent.group}, not "
                        f"{group_namespace}/{group}. Fix: enroll with that group's servers")
    if agent.deleting:
        return Decision(Action.REFUSE, "AgentDeleting", f"Agent {agent.ref} is being deleted")
    return _by_approval(agent, policy)


def sidecar_names(pod: PodClaim) -> list[str]:
    """Names a sidecar's Agent may have in the Pod's namespace: the one the operator's webhook wrote, the Pod's."""
    return list(dict.fromkeys([name for name in (pod.agent_annotation, pod.name) if name]))


def choose_agent(pod: PodClaim, found: list[AgentFacts], group_namespace: str) -> AgentFacts | None:
    """The Agent a Pod speaks for. A sidecar: an Agent in its namespace owned by this very Pod (uid) or named like
    it. A node agent: a Pod in the group's own namespace, for the group's Agent of its node (label or name). A Pod
    cannot pick another Agent by annotating itself: the Agent must point back at the Pod or its node.
    """
    for agent in found:
        if agent.placement is Placement.SIDECAR and agent.namespace == pod.namespace and (
                pod.uid in agent.owner_uids or agent.name == pod.name):
            return agent
    for agent in found:
        if agent.placement is Placement.NODE and pod.node and pod.namespace == group_namespace and (
                agent.labels.get(NODE_LABEL) == pod.node or agent.name == pod.node):
            return agent
    return None


@dataclass(frozen=True)
class PodClaim:
    """What a TokenReview and the Pod it is bound to prove: this ServiceAccount, in this Pod, on this node."""

    namespace: str
    name: str
    uid: str
    service_account: str
    node: str = ""
    agent_annotation: str = ""


@dataclass(frozen=True)
class ReviewVerdict:
    claim: PodClaim | None
    reason: str
    message: str


def judge_review(status: Mapping[str, Any]) -> ReviewVerdict:
    """A TokenReview's status: authenticated, for our audience, a ServiceAccount, bound to a Pod."""
    if not status.get("authenticated"):
        error = str(status.get("error") or "the API server does not accept it")
        return ReviewVerdict(None, "InvalidServiceAccountToken",
                             f"the ServiceAccount token was refused by TokenReview ({error[:200]}). Fix: present the "
                             f"projected token of the pod (a serviceAccountToken volume with audience "
                             f"{TOKEN_AUDIENCE!r})")
    if TOKEN_AUDIENCE not in (status.get("audiences") or []):
        return ReviewVerdict(None, "WrongAudience",
                             f"the ServiceAccount token is not for audience {TOKEN_AUDIENCE!r}. Fix: project it with "
                             f"audience: {TOKEN_AUDIENCE}")
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    if not username.startswith(SERVICE_ACCOUNT_PREFIX) or username.count(":") != 3:
        return ReviewVerdict(None, "NotAServiceAccount",
                             f"the token belongs to {username!r}, not a ServiceAccount. Fix: present the pod's "
                             "projected ServiceAccount token")
    namespace, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).split(":")
    extra = user.get("extra") or {}
    pod_name = next(iter(extra.get(POD_NAME_CLAIM) or []), "")
    pod_uid = next(iter(extra.get(POD_UID_CLAIM) or []), "")
    if not pod_name or not pod_uid:
        return ReviewVerdict(None, "TokenNotBoundToPod",
                             f"the token of {namespace}/{account} is not bound to a Pod. Fix: use a projected "
                             "serviceAccountToken volume (a Pod-bound token), not a long-lived Secret token")
    return ReviewVerdict(PodClaim(namespace, pod_name, pod_uid, account), "Authenticated",
                         f"ServiceAccount {namespace}/{account} in Pod {pod_name}")


def check_pod(claim: PodClaim, pod: Mapping[str, Any] | None) -> ReviewVerdict:
    """The Pod the token is bound to still exists, is the same Pod (uid) and runs as the same ServiceAccount."""
    if pod is None:
        return ReviewVerdict(None, "PodGone", f"Pod {claim.namespace}/{claim.name} no longer exists")
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if meta.get("uid") != claim.uid:
        return ReviewVerdict(None, "PodReplaced",
                             f"Pod {claim.namespace}/{claim.name} was replaced (uid differs from the token's). Fix: "
                             "the new Pod enrolls with its own token")
    if (spec.get("serviceAccountName") or "default") != claim.service_account:
        return ReviewVerdict(None, "WrongServiceAccount",
                             f"Pod {claim.namespace}/{claim.name} does not run as {claim.service_account}")
    node = str(spec.get("nodeName") or "")
    annotation = str((meta.get("annotations") or {}).get(AGENT_ANNOTATION) or "")
    return ReviewVerdict(PodClaim(claim.namespace, claim.name, claim.uid, claim.service_account, node, annotation),
                         "PodVerified", f"Pod {claim.namespace}/{claim.name} verified")
