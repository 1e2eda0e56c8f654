"""The operator's decisions as plain functions: assignment, approval, conditions, pack checks, task fan-out."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from opsmgr.api.agent import Approval
from opsmgr.api.agent_task import AgentTaskSpec, ChildTaskCounts, TaskPhase
from opsmgr.api.conditions import Condition, ConditionStatus
from opsmgr.api.management_group import ApprovalPolicy, DatabaseMode
from opsmgr.api.management_pack import ManagementPackSpec, Task, TaskParameter
from opsmgr.api.pack_validation import pack_problems
from opsmgr.operator.approval import decide_approval, to_rejudge, withdrawn
from opsmgr.operator.assignment import assign, load, missing_servers
from opsmgr.operator.indexes import AgentEntry
from opsmgr.operator.names import APPROVAL_ANNOTATION
from opsmgr.operator.readiness import (
    AgentFacts,
    CertificateFacts,
    DatabaseFacts,
    JobState,
    assigned_verdict,
    certificates_verdict,
    databases_verdict,
    servers_verdict,
)
from opsmgr.operator.status_writer import announcements, status_patch
from opsmgr.operator.task_fanout import child_spec, parent_phase, sum_children, task_problems, timed_out

SERVERS = ["g-server-0", "g-server-1", "g-server-2"]
AGENTS = [f"agent-{i}" for i in range(3000)]


# --- assignment ---

def test_agents_spread_evenly_across_servers() -> None:
    counts = load(a for a in (assign(name, SERVERS) for name in AGENTS) if a is not None)
    assert set(counts) == set(SERVERS)
    assert all(abs(count - 1000) < 120 for count in counts.values()), counts


def test_every_agent_gets_a_failover_server_other_than_its_primary() -> None:
    for name in AGENTS[:200]:
        assignment = assign(name, SERVERS)
        assert assignment is not None
        assert len(assignment.failover) == 1 and assignment.primary not in assignment.failover


def test_scaling_up_moves_only_the_share_of_agents_the_new_server_takes() -> None:
    before = {name: assign(name, SERVERS[:2]) for name in AGENTS}
    after = {name: assign(name, SERVERS) for name in AGENTS}
    moved = [n for n in AGENTS if before[n].primary != after[n].primary]  # type: ignore[union-attr]
    assert all(after[n].primary == "g-server-2" for n in moved)  # type: ignore[union-attr]
    assert 800 < len(moved) < 1200


def test_scaling_down_moves_only_the_agents_of_the_removed_server() -> None:
    before = {name: assign(name, SERVERS) for name in AGENTS}
    after = {name: assign(name, SERVERS[:2]) for name in AGENTS}
    for name in AGENTS:
        if before[name].primary != "g-server-2":  # type: ignore[union-attr]
            assert after[name].primary == before[name].primary  # type: ignore[union-attr]


def test_pinned_servers_from_the_spec_win_and_missing_ones_are_reported() -> None:
    assignment = assign("db01", SERVERS[:2], "g-server-5", ["g-server-1"])
    assert assignment is not None
    assert (assignment.primary, assignment.failover) == ("g-server-5", ("g-server-1",))
    assert missing_servers(assignment, SERVERS[:2]) == ["g-server-5"]


def test_no_servers_means_no_assignment() -> None:
    assert assign("x", []) is None


# --- approval ---

@pytest.mark.parametrize(("policy", "expected", "reason"), [
    (ApprovalPolicy.AUTO_APPROVE, Approval.APPROVED, "AutoApproved"),
    (ApprovalPolicy.REVIEW, Approval.PENDING, "PendingApproval"),
    (ApprovalPolicy.REJECT, Approval.REJECTED, "RejectedByPolicy"),
])
def test_a_new_agent_follows_the_groups_policy(policy: ApprovalPolicy, expected: Approval, reason: str) -> None:
    decision = decide_approval(policy, {}, Approval.PENDING)
    assert (decision.approval, decision.reason) == (expected, reason)


def test_a_person_approves_or_rejects_with_the_annotation_whatever_the_policy() -> None:
    approved = decide_approval(ApprovalPolicy.REJECT, {APPROVAL_ANNOTATION: "Approved"}, Approval.REJECTED)
    assert approved.approval is Approval.APPROVED
    rejected = decide_approval(ApprovalPolicy.AUTO_APPROVE, {APPROVAL_ANNOTATION: "Rejected"}, Approval.APPROVED)
    assert rejected.approval is Approval.REJECTED
    assert withdrawn(Approval.APPROVED, rejected.approval)


def test_a_misspelt_annotation_changes_nothing_and_says_how_to_fix_it() -> None:
    decision = decide_approval(ApprovalPolicy.REVIEW, {APPROVAL_ANNOTATION: "yes"}, Approval.PENDING)
    assert decision.approval is Approval.PENDING and decision.reason == "InvalidApprovalAnnotation"
    assert "neither Approved nor Rejected" in decision.message


def test_a_decision_sticks_when_the_policy_changes_later() -> None:
    earlier = decide_approval(ApprovalPolicy.AUTO_APPROVE, {}, Approval.PENDING)
    later = decide_approval(ApprovalPolicy.REJECT, {}, Approval.APPROVED, earlier)
    assert later == earlier
    assert not withdrawn(Approval.APPROVED, later.approval)


# --- conditions ---

def test_databases_are_ready_only_once_migrated() -> None:
    embedded = DatabaseMode.EMBEDDED
    assert databases_verdict(DatabaseFacts(embedded, database_ready=False)).reason == "DatabaseStarting"
    assert databases_verdict(DatabaseFacts(embedded, migration=JobState.RUNNING)).reason == "Migrating"
    failed = databases_verdict(DatabaseFacts(embedded, migration=JobState.FAILED))
    assert failed.status is ConditionStatus.FALSE and failed.reason == "MigrationFailed"
    assert databases_verdict(DatabaseFacts(embedded, migration=JobState.SUCCEEDED)).status is ConditionStatus.TRUE


def test_a_missing_external_secret_is_named_with_the_fix() -> None:
    verdict = databases_verdict(DatabaseFacts(DatabaseMode.EXTERNAL, missing_secrets=("pg-app/uri",)))
    assert verdict.reason == "SecretMissing" and "pg-app/uri" in verdict.message


def test_a_bad_imported_ca_keeps_its_reason() -> None:
    verdict = certificates_verdict(CertificateFacts("NotACA", "tls.crt is not a CA"))
    assert (verdict.status, verdict.reason) == (ConditionStatus.FALSE, "NotACA")
    ok = certificates_verdict(CertificateFacts(ca_not_after=datetime(2035, 1, 1, tzinfo=UTC), servers_issued=2,
                                               servers_desired=2))
    assert ok.status is ConditionStatus.TRUE and "2035-01-01" in ok.message


def test_servers_are_ready_when_every_replica_is() -> None:
    assert servers_verdict(2, 1).reason == "ServersStarting"
    assert servers_verdict(2, 2).status is ConditionStatus.TRUE
    assert servers_verdict(2, 0, exists=False).reason == "WaitingForDependencies"


def test_an_agent_of_a_missing_group_says_so() -> None:
    verdict = assigned_verdict(AgentFacts(approved=False, in_cluster=True, group_found=False))
    assert verdict.reason == "ManagementGroupNotFound"


def test_status_patch_holds_only_the_owned_fields_that_changed() -> None:
    old = {"approval": "Pending", "health": "Healthy", "primaryServer": "a"}
    new = {"approval": "Approved", "health": "Critical", "primaryServer": "a"}
    assert status_patch(old, new, ("approval", "primaryServer")) == {"approval": "Approved"}
    assert status_patch(old, old, ("approval",)) == {}


# --- management packs ---

def pack(**extra: object) -> ManagementPackSpec:
    base: dict[str, object] = {
        "managementGroupRef": {"name": "g"}, "version": "1.0.0.0",
        "rules": [{"name": "cpu", "performance": {"object": "Processor", "counter": "% Processor Time"}}],
        "monitors": [{"name": "disk", "performance": {"object": "Logical Disk", "counter": "% Free Space"},
                      "criticalThreshold": 90}],
    }
    return ManagementPackSpec.model_validate(base | extra)


def test_a_valid_pack_has_no_problems() -> None:
    assert pack(overrides=[{"name": "o", "monitor": "disk", "parameter": "CriticalThreshold", "value": "95"}]) \
        .model_dump() and pack_problems(pack()) == []


def test_an_override_naming_a_rule_that_does_not_exist_is_named() -> None:
    problems = pack_problems(pack(overrides=[{"name": "o", "rule": "memory", "parameter": "Enabled",
                                              "value": "false"}]))
    assert problems == ["spec.overrides[0] (o): rule 'memory' is not in spec.rules; name one of cpu"]


def test_an_override_parameter_that_does_not_apply_or_has_a_bad_value_is_named() -> None:
    wrong_parameter = pack_problems(pack(overrides=[{"name": "o", "rule": "cpu", "parameter": "WarningThreshold",
                                                     "value": "1"}]))
    assert "does not apply to rule 'cpu'" in wrong_parameter[0]
    bad_value = pack_problems(pack(overrides=[{"name": "o", "monitor": "disk", "parameter": "Enabled",
                                               "value": "no"}]))
    assert "is not true or false" in bad_value[0]


def test_a_task_argument_must_name_a_declared_parameter() -> None:
    problems = pack_problems(pack(tasks=[{"name": "restart", "command": "systemctl",
                                          "arguments": ["restart", "{service}"]}]))
    assert "refers to {service}" in problems[0]


# --- agent tasks ---

TASK = Task(name="restart", command="systemctl", arguments=["restart", "{service}"],
            parameters=[TaskParameter(name="service", required=True)], timeout_seconds=60)


def task_spec(**extra: object) -> AgentTaskSpec:
    return AgentTaskSpec.model_validate({"task": {"managementPack": "linux", "name": "restart"}} | extra)


def test_a_run_needs_its_pack_task_and_required_parameters() -> None:
    assert "does not exist" in task_problems(task_spec(agent="a"), None, pack_found=False)[0]
    assert "has no task" in task_problems(task_spec(agent="a"), None, pack_found=True)[0]
    assert task_problems(task_spec(agent="a"), TASK, pack_found=True) == ["spec.parameters: task 'restart' "
                                                                          "requires 'service'; add it"]
    ok = task_spec(agent="a", parameters=[{"name": "service", "value": "nginx"}])
    assert task_problems(ok, TASK, pack_found=True) == []


def test_a_silent_run_times_out_after_its_timeout_and_a_grace() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    timeout = timedelta(seconds=60)
    assert not timed_out(TaskPhase.PENDING, None, created, timeout, created + timedelta(seconds=80))
    assert timed_out(TaskPhase.PENDING, None, created, timeout, created + timedelta(seconds=91))
    assert not timed_out(TaskPhase.SUCCEEDED, None, created, timeout, created + timedelta(days=1))


def test_a_child_runs_the_parents_task_on_one_agent() -> None:
    parent = task_spec(agentSelector={"matchLabels": {"role": "db"}}, parameters=[{"name": "service",
                                                                                   "value": "nginx"}])
    child = child_spec(parent, "db01")
    assert child["agent"] == "db01" and "agentSelector" not in child
    assert AgentTaskSpec.model_validate(child).parameter_values() == {"service": "nginx"}


def test_children_sum_up_into_the_parents_phase() -> None:
    phases = [TaskPhase.SUCCEEDED, TaskPhase.TIMED_OUT, TaskPhase.RUNNING]
    counts = sum_children(phases)
    assert counts == ChildTaskCounts(total=3, running=1, succeeded=1, failed=1)
    assert parent_phase(counts) is TaskPhase.RUNNING
    assert parent_phase(sum_children([TaskPhase.SUCCEEDED] * 2)) is TaskPhase.SUCCEEDED
    assert parent_phase(sum_children([TaskPhase.SUCCEEDED, TaskPhase.FAILED])) is TaskPhase.FAILED
    assert parent_phase(sum_children([TaskPhase.PENDING] * 2)) is TaskPhase.PENDING
    assert parent_phase(ChildTaskCounts()) is TaskPhase.FAILED
    assert Counter(phases)[TaskPhase.SUCCEEDED] == 1


def test_a_new_agent_turning_every_condition_true_is_one_event_and_each_failure_its_own_warning() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    true = [Condition(type=t, status=ConditionStatus.TRUE, reason=r, message=m, last_transition_time=now)
            for t, r, m in (("Approved", "AutoApproved", "approved by policy"), ("Assigned", "Assigned", "server-0"),
                            ("Ready", "AllReady", "all ready"))]
    failed = Condition(type="CertificateIssued", status=ConditionStatus.FALSE, reason="CANotReady",
                       message="the CA Secret is missing", last_transition_time=now)
    made = announcements([*true, failed])
    assert [(a.type, a.reason) for a in made] == [("Normal", "AllReady"), ("Warning", "CANotReady")]
    assert made[0].message == ("Ready is True: all ready; Approved is True: approved by policy; "
                               "Assigned is True: server-0")
    assert made[1].message == "CertificateIssued is False: the CA Secret is missing"
    assert announcements([]) == []


def _entry(name: str, approval: str, *, judged: bool = True, asked: str | None = None,
           deleting: bool = False) -> AgentEntry:
    return AgentEntry(namespace="ops", name=name, fqdn=f"{name}.example.com", approval=approval, judged=judged,
                      asked_policy=asked, health="Unknown", placement="Node", labels=(), pinned_primary=None,
                      pinned_failover=(), primary=None, failover=(), certificate_not_after=None, deleting=deleting)


def test_a_policy_that_decides_wakes_the_judged_pending_agents_once_and_review_wakes_none() -> None:
    agents = [_entry("pending", "Pending"), _entry("new", "Pending", judged=False), _entry("approved", "Approved"),
              _entry("asked", "Pending", asked="AutoApprove"), _entry("going", "Pending", deleting=True)]
    assert [a.name for a in to_rejudge(ApprovalPolicy.AUTO_APPROVE, agents)] == ["pending"]
    assert [a.name for a in to_rejudge(ApprovalPolicy.REJECT, agents)] == ["pending", "asked"]
    assert to_rejudge(ApprovalPolicy.REVIEW, agents) == []
