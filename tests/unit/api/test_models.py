"""The pydantic models accept every example and reject what the API server rejects, with the same words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import ValidationError

from opsmgr.api import RESOURCES, Agent, AgentTask, ManagementGroup, ManagementPack
from opsmgr.api.agent import Approval, Connection, Health, MaintenanceWindow, Placement
from opsmgr.api.agent_task import TaskPhase
from opsmgr.api.common import LabelSelector, parse_duration
from opsmgr.api.management_group import AgentCounts, DatabaseMode, ManagementGroupSpec
from tests.unit.api.cases import EXAMPLES, INVALID_ON_CREATE, INVALID_ON_UPDATE, Invalid, changed, model_of


def described(error: ValidationError) -> str:
    """Every error as `path: message`, with paths written the way the API server writes them."""
    lines = []
    for item in error.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        lines.append(f"{path}: {item['msg']}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_validates_against_its_model(name: str) -> None:
    document = EXAMPLES[name]
    resource = model_of(document).model_validate(document)
    assert resource.metadata.name == document["metadata"]["name"]


def test_examples_cover_every_kind_and_placement() -> None:
    kinds = {document["kind"] for document in EXAMPLES.values()}
    assert kinds == {resource.kind_name() for resource in RESOURCES}
    placements = {doc["spec"]["placement"] for doc in EXAMPLES.values() if doc["kind"] == "Agent"}
    assert placements == {p.value for p in Placement}


def test_example_pack_has_optimized_rules_an_event_rule_a_monitor_and_a_task() -> None:
    pack = ManagementPack.model_validate(EXAMPLES["management-pack-linux"]).spec
    optimized = [r for r in pack.rules if r.performance and r.performance.optimized_collection]
    assert {r.performance.optimized_collection.tolerance_type.value for r in optimized if r.performance
            and r.performance.optimized_collection} == {"Absolute", "Percentage"}
    assert any(r.event is not None for r in pack.rules)
    assert {m.direction.value for m in pack.monitors} == {"Above", "Below"}
    assert pack.task("restart-service") is not None


@pytest.mark.parametrize("case", INVALID_ON_CREATE, ids=lambda case: case.id)
def test_model_rejects_what_the_api_server_rejects(case: Invalid) -> None:
    document = case.document()
    with pytest.raises(ValidationError) as raised:
        model_of(document).model_validate(document)
    # The model reports the path of the object holding the field; its message or location names the field.
    assert case.field.rsplit(".", 1)[-1] in described(raised.value)


@pytest.mark.parametrize("case", INVALID_ON_UPDATE, ids=lambda case: case.id)
def test_changed_object_is_valid_on_its_own_so_only_immutability_rejects_it(case: Invalid) -> None:
    document = case.document()
    model_of(document).model_validate(document)


def test_cel_rule_twin_reports_the_rule_message() -> None:
    document = next(c for c in INVALID_ON_CREATE if c.id == "renew-before-not-shorter-than-validity").document()
    with pytest.raises(ValidationError, match=r"spec\.certificates\.renewBefore must be shorter than"):
        ManagementGroup.model_validate(document)


def test_python_names_are_snake_case_and_json_names_camel_case() -> None:
    agent = Agent.model_validate(EXAMPLES["agent-host"])
    assert agent.spec.queue_limit_mb == 200
    assert agent.spec.management_group_ref.name == "production"
    wire = agent.to_dict()
    assert wire["apiVersion"] == "opsmgr.io/v1alpha1"
    assert {"managementGroupRef", "queueLimitMB", "failoverServers", "primaryServer"} <= wire["spec"].keys()
    assert wire["status"]["approval"] == "Pending"
    assert "lastHeartbeatTime" not in wire["status"], "unset optional fields are left out"


def test_models_accept_python_names_too() -> None:
    spec = ManagementGroupSpec(agent_port=6000, approval_policy="AutoApprove")  # type: ignore[arg-type]
    assert spec.to_dict()["agentPort"] == 6000
    assert spec.database.mode is DatabaseMode.EMBEDDED


def test_from_body_ignores_server_metadata_it_does_not_model() -> None:
    body: dict[str, Any] = {
        **EXAMPLES["agent-node"],
        "metadata": {"name": "worker-1", "namespace": "monitoring", "generation": 3, "uid": "u-1",
                     "managedFields": [{"manager": "kubectl"}], "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"approval": "Approved", "connection": "Connected", "health": "Healthy", "heartbeat": "OK",
                   "lastHeartbeatTime": "2026-01-01T00:01:00Z", "server": "production-server-0",
                   "queue": {"percentUsed": 12, "evictions": 3}},
    }
    agent = Agent.from_body(body)
    assert agent.metadata.generation == 3
    assert (agent.status.approval, agent.status.connection, agent.status.health) == (
        Approval.APPROVED, Connection.CONNECTED, Health.HEALTHY)
    assert agent.status.queue.evictions == 3
    assert agent.status.last_heartbeat_time == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def test_parse_duration_reads_go_durations() -> None:
    assert parse_duration("8760h") == timedelta(days=365)
    assert parse_duration("1h30m15s") == timedelta(hours=1, minutes=30, seconds=15)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1d")


def test_label_selector_matches_labels_and_expressions() -> None:
    selector = LabelSelector.model_validate({
        "matchLabels": {"opsmgr.io/os": "linux"},
        "matchExpressions": [{"key": "role", "operator": "In", "values": ["database", "cache"]},
                             {"key": "retired", "operator": "DoesNotExist"}],
    })
    assert selector.matches({"opsmgr.io/os": "linux", "role": "database"})
    assert not selector.matches({"opsmgr.io/os": "linux", "role": "web"})
    assert not selector.matches({"opsmgr.io/os": "linux", "role": "cache", "retired": "yes"})
    assert LabelSelector().matches({})


def test_maintenance_window_is_open_between_start_and_end() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    window = MaintenanceWindow(start=start, end=start + timedelta(hours=2))
    assert not window.is_open(start - timedelta(seconds=1))
    assert window.is_open(start + timedelta(hours=1))
    assert not window.is_open(start + timedelta(hours=2))


def test_agent_task_phases_know_when_they_are_finished() -> None:
    task = AgentTask.model_validate(EXAMPLES["agent-task"])
    assert task.status.phase is TaskPhase.PENDING and not task.status.phase.finished
    assert task.spec.parameter_values() == {"service": "nginx"}
    assert {p for p in TaskPhase if p.finished} == {TaskPhase.SUCCEEDED, TaskPhase.FAILED, TaskPhase.TIMED_OUT}


def test_agent_heartbeat_overrides_its_group_field_by_field() -> None:
    agent = Agent.model_validate(EXAMPLES["agent-host"])
    group = ManagementGroup.model_validate(EXAMPLES["management-group"]).spec.heartbeat
    settings = agent.spec.heartbeat_settings(group)
    assert (settings.interval_seconds, settings.missed_threshold) == (30, 4)
    node = Agent.model_validate(EXAMPLES["agent-node"]).spec.heartbeat_settings(group)
    assert (node.interval_seconds, node.missed_threshold) == (60, 4)


def test_agent_is_in_maintenance_only_while_its_window_is_open() -> None:
    end = datetime(2030, 1, 1, tzinfo=UTC)
    document = changed(EXAMPLES["agent-host"], {"spec.maintenance": {"end": end.isoformat()}})
    agent = Agent.model_validate(document)
    assert agent.spec.in_maintenance(end - timedelta(minutes=1))
    assert not agent.spec.in_maintenance(end)
    assert not Agent.model_validate(EXAMPLES["agent-node"]).spec.in_maintenance(end)


def test_agent_counts_tally_healths() -> None:
    counts = AgentCounts.tally([Health.HEALTHY, Health.HEALTHY, Health.CRITICAL, "Unknown"], pending=1)
    assert (counts.total, counts.healthy, counts.warning, counts.critical, counts.unknown, counts.pending) == (
        4, 2, 0, 1, 1, 1)


def test_manifest_leaves_status_to_its_subresource() -> None:
    agent = Agent.model_validate(EXAMPLES["agent-sidecar"])
    assert "status" not in agent.manifest()
    assert agent.manifest()["spec"]["placement"] == "Sidecar"
    assert agent.status_patch() == {"status": agent.status.to_dict()}


def test_from_body_accepts_read_only_mappings_like_kopf_bodies() -> None:
    body = MappingProxyType({**EXAMPLES["agent-task"],
                             "spec": MappingProxyType(dict(EXAMPLES["agent-task"]["spec"]))})
    assert AgentTask.from_body(body).spec.agent == "db01-example-com"
