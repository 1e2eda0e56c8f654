"""Whether an agent may connect: the group's approval policy, unless a person decided otherwise.

A person approves or rejects with the `opsmgr.io/approval` annotation (Approved | Rejected); the policy decides
only agents nobody decided about. A decision sticks: changing the policy later does not re-judge agents already
approved or rejected, as in Operations Manager, where the policy applies to new agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opsmgr.api.agent import Approval
from opsmgr.api.management_group import ApprovalPolicy
from opsmgr.operator.indexes import AgentEntry
from opsmgr.operator.names import APPROVAL_ANNOTATION


@dataclass(frozen=True)
class ApprovalDecision:
    approval: Approval
    reason: str
    message: str


def decide_approval(policy: ApprovalPolicy, annotations: Mapping[str, str], current: Approval,
                    earlier: ApprovalDecision | None = None) -> ApprovalDecision:
    """The approval of one agent now; `earlier` is the decision on record (its reason is kept while it stands)."""
    requested = annotations.get(APPROVAL_ANNOTATION)
    if requested is not None:
        return _by_annotation(requested, current)
    if current is not Approval.PENDING:
        if earlier is not None and earlier.approval is current:
            return earlier
        return ApprovalDecision(current, "Approved" if current is Approval.APPROVED else "Rejected",
                                f"{current.value.lower()} earlier; the policy applies to new agents only")
    match policy:
        case ApprovalPolicy.AUTO_APPROVE:
            return ApprovalDecision(Approval.APPROVED, "AutoApproved", "approved by the group's AutoApprove policy")
        case ApprovalPolicy.REJECT:
            return ApprovalDecision(Approval.REJECTED, "RejectedByPolicy",
                                    "rejected by the group's Reject policy; annotate "
                                    f"{APPROVAL_ANNOTATION}=Approved to admit it")
        case ApprovalPolicy.REVIEW:
            return ApprovalDecision(Approval.PENDING, "PendingApproval",
                                    f"waiting for a person: kubectl annotate agent NAME {APPROVAL_ANNOTATION}="
                                    "Approved (or Rejected)")


def _by_annotation(requested: str, current: Approval) -> ApprovalDecision:
    if requested == Approval.APPROVED.value:
        return ApprovalDecision(Approval.APPROVED, "ApprovedByAdministrator",
                                f"approved by the {APPROVAL_ANNOTATION} annotation")
    if requested == Approval.REJECTED.value:
        return ApprovalDecision(Approval.REJECTED, "RejectedByAdministrator",
                                f"rejected by the {APPROVAL_ANNOTATION} annotation")
    return ApprovalDecision(current, "InvalidApprovalAnnotation",
                            f"annotation {APPROVAL_ANNOTATION}={requested!r} is neither Approved nor Rejected; "
                            "set it to one of them or remove it")


def to_rejudge(policy: ApprovalPolicy, agents: Iterable[AgentEntry]) -> list[AgentEntry]:
    """The Agents to judge again under `policy`: those judged Pending and not yet asked under it, when the policy
    decides by itself; none under Review, which waits for a person. New Agents are their own handler's.
    """
    if policy is ApprovalPolicy.REVIEW:
        return []
    return [a for a in agents if a.judged and a.approval == Approval.PENDING.value and not a.deleting
            and a.asked_policy != policy.value]


def withdrawn(previous: Approval, now: Approval) -> bool:
    """Whether an approval was taken back: the agent's certificate must be revoked."""
    return previous is Approval.APPROVED and now is not Approval.APPROVED
