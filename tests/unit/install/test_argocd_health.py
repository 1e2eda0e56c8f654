"""The Argo CD health checks in argocd/resource_customizations, run as Argo CD runs them.

Argo CD's own test harness reads every `health_test.yaml` and compares each case's status and message; this
does the same (in Lua 5.1, see `argocd.py`), then replays the operator's own readiness verdicts through the scripts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lupa.lua51 import LuaError, LuaRuntime  # type: ignore[import-untyped]  # lupa ships no stubs

from opsmgr.api import RESOURCES, RESOURCES_BY_KIND
from opsmgr.api.conditions import ConditionStatus, summarize_ready
from opsmgr.api.management_group import DatabaseMode
from opsmgr.operator.readiness import (
    AGENT_APPROVED,
    AGENT_ASSIGNED,
    AGENT_CERTIFICATE,
    CERTIFICATES_READY,
    DATABASES_READY,
    GROUP_REQUIRED,
    SERVERS_READY,
    AgentFacts,
    CertificateFacts,
    DatabaseFacts,
    JobState,
    Verdict,
    agent_required,
    assigned_verdict,
    certificate_verdict,
    certificates_verdict,
    databases_verdict,
    servers_verdict,
)
from tests.unit.install.argocd import CUSTOMIZATIONS, SANDBOXED_RUN, assess, load

KINDS = [resource.kind_name() for resource in RESOURCES]


def _cases() -> list[Any]:
    cases = []
    for kind in KINDS:
        for test in load(CUSTOMIZATIONS / kind / "health_test.yaml")["tests"]:
            name = Path(test["inputPath"]).stem
            cases.append(pytest.param(kind, test["inputPath"], test["healthStatus"], id=f"{kind}-{name}"))
    return cases


def test_every_opsmgr_kind_has_a_health_check_and_nothing_else_does() -> None:
    assert sorted(path.name for path in CUSTOMIZATIONS.iterdir()) == sorted(KINDS)
    for kind in KINDS:
        assert {p.name for p in (CUSTOMIZATIONS / kind).iterdir()} == {"health.lua", "health_test.yaml", "testdata"}


@pytest.mark.parametrize(("kind", "input_path", "expected"), _cases())
def test_health_script_reports_the_expected_status_and_message(kind: str, input_path: str,
                                                               expected: Mapping[str, str]) -> None:
    obj = load(CUSTOMIZATIONS / kind / input_path)
    assert obj["kind"] == kind
    assert assess(kind, obj) == (expected["status"], expected["message"])


@pytest.mark.parametrize(("kind", "input_path", "expected"), _cases())
def test_test_data_is_a_valid_object_of_its_kind(kind: str, input_path: str, expected: Mapping[str, str]) -> None:
    # Test data that the real API would refuse would prove nothing about real objects.
    RESOURCES_BY_KIND[kind].from_body(load(CUSTOMIZATIONS / kind / input_path))


# Every kind's health_test.yaml must hold these cases, so no rule goes untested for any kind.
REQUIRED_CASES = {
    "no-status": "Progressing",
    "status-not-yet-observed": "Progressing",
    "deleting": "Progressing",
    "generation-ahead-of-status": "Progressing",
    "ready-condition-from-older-generation": "Progressing",
    "no-ready-condition": "Progressing",
    "ready-unknown": "Progressing",
    "degraded": "Degraded",
    "healthy": "Healthy",
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_rule_is_covered_for_every_kind(kind: str) -> None:
    covered = {Path(t["inputPath"]).stem: t["healthStatus"]["status"]
               for t in load(CUSTOMIZATIONS / kind / "health_test.yaml")["tests"]}
    assert {name: covered.get(name) for name in REQUIRED_CASES} == REQUIRED_CASES


def _testdata(kind: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = load(CUSTOMIZATIONS / kind / "testdata" / f"{name}.yaml")
    return loaded


@pytest.mark.parametrize("kind", KINDS)
def test_an_edit_waits_for_the_operator_instead_of_failing_the_sync(kind: str) -> None:
    # The user applies a new spec to a Degraded object: until the operator observed it, the old verdict is moot.
    obj = _testdata(kind, "degraded")
    assert assess(kind, obj)[0] == "Degraded"
    obj["metadata"]["generation"] += 1
    assert assess(kind, obj)[0] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
def test_deleting_is_progressing_whatever_the_last_verdict(kind: str) -> None:
    for name in ("healthy", "degraded"):
        obj = copy.deepcopy(_testdata(kind, name))
        obj["metadata"]["deletionTimestamp"] = "2026-11-20T11:00:00Z"
        assert assess(kind, obj)[0] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_object_is_progressing_until_the_operator_writes_status(kind: str) -> None:
    obj = _testdata(kind, "healthy")
    del obj["status"]
    assert assess(kind, obj)[0] == "Progressing"


def test_an_agent_awaiting_approval_is_suspended_until_approved() -> None:
    obj = _testdata("Agent", "pending-approval")
    assert assess("Agent", obj)[0] == "Suspended"
    obj["status"]["approval"] = "Approved"
    assert assess("Agent", obj)[0] == "Degraded"  # approved, but Ready still False at the observed generation


def test_a_running_task_is_progressing_though_ready_is_false() -> None:
    obj = _testdata("AgentTask", "running")
    assert obj["status"]["conditions"][0]["status"] == "False"
    assert assess("AgentTask", obj)[0] == "Progressing"


def test_a_script_that_reaches_outside_argo_cds_libraries_fails_here() -> None:
    # Guards the sandbox itself: without it, a script using io or os would pass here and break in Argo CD.
    lua = LuaRuntime()
    run = lua.execute(SANDBOXED_RUN)
    with pytest.raises(LuaError, match="io"):
        run("return {status = io.read()}", lua.table_from({}, recursive=True))


# --- The verdicts the operator's own policies write, as Argo CD will judge them ---

NOW = datetime(2026, 11, 20, 10, 5, tzinfo=UTC)


def _with_conditions(kind: str, verdicts: Mapping[str, Verdict], required: tuple[str, ...]) -> dict[str, Any]:
    """The kind's healthy test object with the conditions the operator writes for these verdicts (generation 2)."""
    obj = _testdata(kind, "healthy")
    conditions = [verdict.condition(type, 2, NOW) for type, verdict in verdicts.items()]
    conditions.append(summarize_ready(conditions, required, generation=2, now=NOW))
    obj["status"]["conditions"] = [condition.to_dict() for condition in conditions]
    return obj


def _group(databases: DatabaseFacts, certificates: CertificateFacts, servers: Verdict) -> dict[str, Any]:
    return _with_conditions("ManagementGroup", {
        DATABASES_READY: databases_verdict(databases), CERTIFICATES_READY: certificates_verdict(certificates),
        SERVERS_READY: servers,
    }, GROUP_REQUIRED)


EMBEDDED = DatabaseMode("Embedded")
ISSUED = CertificateFacts(ca_not_after=datetime(2036, 1, 1, tzinfo=UTC), servers_issued=2, servers_desired=2)


@pytest.mark.parametrize("group", [
    pytest.param(_group(DatabaseFacts(EMBEDDED, database_ready=False), CertificateFacts(servers_desired=2),
                        servers_verdict(2, 0, exists=False)), id="database-pod-starting"),
    pytest.param(_group(DatabaseFacts(EMBEDDED, migration=JobState.RUNNING), ISSUED,
                        servers_verdict(2, 0, exists=False)), id="migrating"),
    pytest.param(_group(DatabaseFacts(EMBEDDED, migration=JobState.SUCCEEDED), ISSUED, servers_verdict(2, 1)),
                 id="servers-starting"),
])
def test_a_group_on_its_way_up_is_progressing_not_degraded(group: dict[str, Any]) -> None:
    # The first reconcile observes the generation long before the group is Ready; a sync must wait, not fail.
    assert assess("ManagementGroup", group)[0] == "Progressing"


@pytest.mark.parametrize("group", [
    pytest.param(_group(DatabaseFacts(EMBEDDED, migration=JobState.FAILED), ISSUED,
                        servers_verdict(2, 0, exists=False)), id="migration-failed"),
    pytest.param(_group(DatabaseFacts(DatabaseMode("External"), missing_secrets=("production-db-app/uri",)), ISSUED,
                        servers_verdict(2, 0, exists=False)), id="external-secret-missing"),
    pytest.param(_group(DatabaseFacts(EMBEDDED, migration=JobState.SUCCEEDED),
                        CertificateFacts(problem_reason="CASecretMissing", problem_message="no Secret production-ca"),
                        servers_verdict(2, 0, exists=False)), id="ca-secret-missing"),
])
def test_a_group_that_needs_a_person_is_degraded_with_the_operators_reason(group: dict[str, Any]) -> None:
    status, message = assess("ManagementGroup", group)
    ready = group["status"]["conditions"][-1]
    assert (status, message) == ("Degraded", f"{ready['reason']}: {ready['message']}")


def test_a_ready_group_is_healthy() -> None:
    group = _group(DatabaseFacts(EMBEDDED, migration=JobState.SUCCEEDED), ISSUED, servers_verdict(2, 2))
    assert assess("ManagementGroup", group) == ("Healthy", "2/2 management servers ready, 12 agents")


def _agent(facts: AgentFacts, approval: Verdict) -> dict[str, Any]:
    verdicts = {AGENT_APPROVED: approval, AGENT_ASSIGNED: assigned_verdict(facts)}
    if facts.in_cluster:
        verdicts[AGENT_CERTIFICATE] = certificate_verdict(facts)
    return _with_conditions("Agent", verdicts, agent_required(facts.in_cluster))


APPROVED = Verdict(ConditionStatus.TRUE, "AutoApproved", "approved by the group's AutoApprove policy")


@pytest.mark.parametrize(("agent", "expected"), [
    pytest.param(_agent(AgentFacts(approved=True, in_cluster=True, primary=None), APPROVED), "Progressing",
                 id="group-has-no-servers-yet"),
    pytest.param(_agent(AgentFacts(approved=True, in_cluster=True, primary="production-server-0"), APPROVED),
                 "Progressing", id="certificate-being-issued"),
    pytest.param(_agent(AgentFacts(approved=True, in_cluster=True, primary="production-server-0",
                                   certificate_issued=True), APPROVED), "Healthy", id="ready"),
    pytest.param(_agent(AgentFacts(approved=True, in_cluster=False, primary="production-server-0",
                                   missing_servers=("production-server-7",)), APPROVED), "Degraded",
                 id="pinned-to-a-server-the-group-does-not-run"),
    pytest.param(_agent(AgentFacts(approved=True, in_cluster=False, group_found=False), APPROVED), "Degraded",
                 id="group-does-not-exist"),
])
def test_agent_verdicts_of_the_operator_as_argo_cd_shows_them(agent: dict[str, Any], expected: str) -> None:
    assert assess("Agent", agent)[0] == expected
