"""Enrollment decisions: the group's policy for new VMs, a person's decision, the key a VM enrolled with, what a
TokenReview proves and which Agent a Pod may speak for."""

from __future__ import annotations

from typing import Any

import pytest

from opsmgr.api.agent import Approval, Placement
from opsmgr.api.management_group import ApprovalPolicy
from opsmgr.pki import generate_private_key
from opsmgr.protocol.enrollment import ENROLLMENT_KEY_ANNOTATION
from opsmgr.server.enrollment_rules import (
    APPROVAL_ANNOTATION,
    Action,
    AgentFacts,
    PodClaim,
    check_pod,
    choose_agent,
    decide_host,
    decide_pod,
    judge_review,
    key_fingerprint,
)

KEY = key_fingerprint(generate_private_key().public_key())
OTHER_KEY = key_fingerprint(generate_private_key().public_key())


def host(approval: Approval = Approval.PENDING, *, key: str | None = KEY, placement: Placement = Placement.HOST,
         annotations: dict[str, str] | None = None) -> AgentFacts:
    notes = dict(annotations or {})
    if key is not None:
        notes[ENROLLMENT_KEY_ANNOTATION] = key
    return AgentFacts(namespace="ops", name="web01.contoso.com", placement=placement, group="contoso",
                      group_namespace="ops", fqdn="web01.contoso.com", status_approval=approval, annotations=notes)


def decide(policy: ApprovalPolicy, agent: AgentFacts | None, *, key: str = KEY, token: bool = True) -> Any:
    return decide_host(policy, agent, key, group="contoso", token_presented=token,
                       key_annotation=ENROLLMENT_KEY_ANNOTATION)


@pytest.mark.parametrize(("policy", "action"), [(ApprovalPolicy.REJECT, Action.REFUSE),
                                                (ApprovalPolicy.REVIEW, Action.CREATE),
                                                (ApprovalPolicy.AUTO_APPROVE, Action.CREATE)])
def test_a_new_vm_is_created_unless_the_group_rejects_new_agents(policy: ApprovalPolicy, action: Action) -> None:
    decision = decide(policy, None)
    assert decision.action is action
    assert decision.use_token is (action is Action.CREATE)  # a refusal does not spend the token
    if action is Action.REFUSE:
        assert decision.reason == "RejectedByPolicy" and "spec.approval" in decision.message


@pytest.mark.parametrize(("policy", "action"), [(ApprovalPolicy.REVIEW, Action.WAIT),
                                                (ApprovalPolicy.AUTO_APPROVE, Action.SIGN)])
def test_the_created_agent_waits_under_review_and_is_signed_at_once_under_auto_approve(
        policy: ApprovalPolicy, action: Action) -> None:
    decision = decide(policy, host(), token=False)
    assert decision.action is action and not decision.use_token


def test_a_person_approving_releases_the_pending_certificate() -> None:
    assert decide(ApprovalPolicy.REVIEW, host(), token=False).reason == "PendingApproval"
    approved = host(annotations={APPROVAL_ANNOTATION: "Approved"})
    assert decide(ApprovalPolicy.REVIEW, approved, token=False).action is Action.SIGN
    assert decide(ApprovalPolicy.REVIEW, host(Approval.APPROVED), token=False).action is Action.SIGN


def test_a_rejected_agent_is_refused_with_how_to_approve_it() -> None:
    decision = decide(ApprovalPolicy.AUTO_APPROVE, host(Approval.REJECTED), token=False)
    assert (decision.action, decision.reason) == (Action.REFUSE, "Rejected")
    assert "opsmgr agents approve web01.contoso.com -n ops" in decision.message


def test_a_poll_with_another_key_is_refused_and_says_how_to_re_enroll() -> None:
    decision = decide(ApprovalPolicy.AUTO_APPROVE, host(Approval.APPROVED), key=OTHER_KEY)
    assert (decision.action, decision.reason) == (Action.REFUSE, "KeyMismatch")
    assert "kubectl delete agent web01.contoso.com -n ops" in decision.message


def test_a_poll_without_token_for_an_unknown_vm_is_refused() -> None:
    assert decide(ApprovalPolicy.AUTO_APPROVE, None, token=False).reason == "NotEnrolled"
    assert decide(ApprovalPolicy.AUTO_APPROVE, host(key=None), token=False).reason == "NotEnrolled"


def test_a_person_created_agent_is_bound_to_the_first_key_that_brings_a_token() -> None:
    decision = decide(ApprovalPolicy.REVIEW, host(Approval.APPROVED, key=None))
    assert (decision.action, decision.bind_key, decision.use_token) == (Action.SIGN, True, True)


def test_a_join_token_cannot_enroll_a_pod_agent() -> None:
    decision = decide(ApprovalPolicy.AUTO_APPROVE, host(placement=Placement.SIDECAR, key=None))
    assert (decision.action, decision.reason) == (Action.REFUSE, "NotAHost")


def _review(**overrides: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "authenticated": True, "audiences": ["opsmgr"],
        "user": {"username": "system:serviceaccount:shop:web",
                 "extra": {"authentication.kubernetes.io/pod-name": ["web-1"],
                           "authentication.kubernetes.io/pod-uid": ["uid-1"]}}}
    status.update(overrides)
    return status


def test_a_pod_bound_service_account_token_names_its_pod() -> None:
    verdict = judge_review(_review())
    assert verdict.claim == PodClaim("shop", "web-1", "uid-1", "web")


@pytest.mark.parametrize(("status", "reason"), [
    ({"authenticated": False, "error": "invalid bearer token"}, "InvalidServiceAccountToken"),
    ({"audiences": ["api"]}, "WrongAudience"),
    ({"user": {"username": "alice"}}, "NotAServiceAccount"),
    ({"user": {"username": "system:serviceaccount:shop:web", "extra": {}}}, "TokenNotBoundToPod"),
])
def test_a_token_that_proves_no_pod_is_refused(status: dict[str, Any], reason: str) -> None:
    verdict = judge_review(_review(**status))
    assert (verdict.claim, verdict.reason) == (None, reason)
    assert "Fix:" in verdict.message


def _pod(uid: str = "uid-1", account: str = "web", node: str = "node-a") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "annotations": {"opsmgr.io/agent": "web-1-agent"}},
            "spec": {"serviceAccountName": account, "nodeName": node}}


def test_the_pod_must_be_the_same_pod_running_as_the_same_account() -> None:
    claim = PodClaim("shop", "web-1", "uid-1", "web")
    assert check_pod(claim, None).reason == "PodGone"
    assert check_pod(claim, _pod(uid="uid-2")).reason == "PodReplaced"
    assert check_pod(claim, _pod(account="default")).reason == "WrongServiceAccount"
    checked = check_pod(claim, _pod()).claim
    assert checked is not None and (checked.node, checked.agent_annotation) == ("node-a", "web-1-agent")


def _agent(name: str, namespace: str, placement: Placement, *, owners: frozenset[str] = frozenset(),
           node: str | None = None) -> AgentFacts:
    return AgentFacts(namespace=namespace, name=name, placement=placement, group="contoso", group_namespace="ops",
                      fqdn=f"{name}.example.com", status_approval=Approval.APPROVED, annotations={},
                      owner_uids=owners, labels={"opsmgr.io/node": node} if node else {})


def test_a_sidecar_speaks_for_the_agent_its_pod_owns_or_is_named_like() -> None:
    claim = PodClaim("shop", "web-1", "uid-1", "web", "node-a", "web-1-agent")
    owned = _agent("web-1-agent", "shop", Placement.SIDECAR, owners=frozenset({"uid-1"}))
    assert choose_agent(claim, [owned], "ops") == owned
    named = _agent("web-1", "shop", Placement.SIDECAR)
    assert choose_agent(claim, [named], "ops") == named
    foreign = _agent("web-1-agent", "shop", Placement.SIDECAR, owners=frozenset({"uid-9"}))
    assert choose_agent(claim, [foreign], "ops") is None  # an annotation alone picks nothing


def test_a_node_agent_pod_must_run_in_the_groups_namespace() -> None:
    node_agent = _agent("contoso-node-node-a", "ops", Placement.NODE, node="node-a")
    in_group = PodClaim("ops", "agent-x", "u", "node-agent", "node-a")
    elsewhere = PodClaim("shop", "agent-x", "u", "default", "node-a")
    assert choose_agent(in_group, [node_agent], "ops") == node_agent
    assert choose_agent(elsewhere, [node_agent], "ops") is None


def test_a_pod_without_agent_or_of_another_group_is_refused_with_the_fix() -> None:
    claim = PodClaim("shop", "web-1", "uid-1", "web", "node-a")
    missing = decide_pod(ApprovalPolicy.AUTO_APPROVE, None, claim, group="contoso", group_namespace="ops")
    assert missing.reason == "NoAgentForPod" and "create an Agent named web-1" in missing.message
    other = AgentFacts(namespace="shop", name="web-1", placement=Placement.SIDECAR, group="fabrikam",
                       group_namespace="shop", fqdn="web-1.example.com", status_approval=Approval.APPROVED,
                       annotations={})
    assert decide_pod(ApprovalPolicy.AUTO_APPROVE, other, claim, group="contoso",
                      group_namespace="ops").reason == "WrongGroup"
