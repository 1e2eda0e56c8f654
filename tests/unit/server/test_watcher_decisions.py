"""The watcher's pure decisions in the server: probe targets and verdicts, settings, and the Agent status patch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opsmgr.api.agent import Agent, Connection
from opsmgr.server.agent_status import CONNECTED_CONDITION, HEARTBEAT_CONDITION, ObservedAgent, status_patch
from opsmgr.server.heartbeat_watcher import HEARTBEAT_FAILURE, AlertResolved, HeartbeatStatus, HeartbeatWatcher
from opsmgr.server.presence import QueueReport
from opsmgr.server.watcher_service import HostTarget, PodTarget, judge_pod, settings_for

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def agent(placement: str = "Host", **spec: Any) -> Agent:
    return Agent.from_body({"metadata": {"name": "web01", "namespace": "ops", **spec.pop("metadata", {})},
                            "spec": {"managementGroupRef": {"name": "contoso"}, "fqdn": "web01.contoso.test",
                                     "placement": placement, **spec}})


def test_a_host_agent_is_probed_on_its_port_with_its_own_timeout_capped_by_the_server() -> None:
    settings = settings_for(agent(probe={"port": 22, "timeoutSeconds": 30}), interval=60, threshold=4,
                            probe_timeout=5, now=NOW)
    assert settings.probe == HostTarget("web01.contoso.test", 22, 5.0)


def test_a_sidecar_agent_is_probed_through_its_pod_named_by_annotation_or_owner() -> None:
    annotated = agent("Sidecar", metadata={"annotations": {"opsmgr.io/pod": "shop/web-7f9"}})
    owned = agent("Sidecar", metadata={"ownerReferences": [{"kind": "Pod", "name": "web-7f9", "apiVersion": "v1",
                                                            "uid": "u"}]})
    assert settings_for(annotated, interval=60, threshold=4, probe_timeout=5, now=NOW).probe == \
        PodTarget("shop", "web-7f9")
    assert settings_for(owned, interval=60, threshold=4, probe_timeout=5, now=NOW).probe == PodTarget("ops", "web-7f9")


def test_the_agents_overrides_and_maintenance_window_win_over_the_group() -> None:
    settings = settings_for(agent(heartbeat={"intervalSeconds": 30, "missedThreshold": 2},
                                  maintenance={"end": (NOW + timedelta(hours=1)).isoformat()}),
                            interval=60, threshold=4, probe_timeout=5, now=NOW)
    assert (settings.interval, settings.threshold, settings.in_maintenance) == (30.0, 2, True)


def test_a_pod_being_deleted_or_gone_is_a_planned_removal_and_only_running_answers() -> None:
    assert judge_pod(None).planned
    deleting = {"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}, "status": {"phase": "Running"}}
    assert judge_pod(deleting).planned
    assert judge_pod({"metadata": {}, "status": {"phase": "Running"}}).reachable
    failed = judge_pod({"metadata": {"name": "web"}, "status": {"phase": "Failed"}})
    assert (failed.reachable, failed.planned, failed.detail) == (False, False, "the Pod web is Failed")


def test_a_planned_removal_takes_back_the_heartbeat_failure() -> None:
    watcher = HeartbeatWatcher(default_interval=1, default_threshold=3)
    watcher.watch("a", 0.0)
    watcher.due(3.0)
    assert watcher.planned_removal("a", 3.1)[0] == AlertResolved("a", HEARTBEAT_FAILURE, 3.1)
    assert watcher.status("a") is HeartbeatStatus.OK
    assert watcher.due(10.0) == []


def observed(**changes: Any) -> ObservedAgent:
    values: dict[str, Any] = {"heartbeat": HeartbeatStatus.OK, "connection": Connection.CONNECTED, "server": "ms-0",
                              "last_heartbeat": NOW, "queue": QueueReport(3, 1000, 10_000, 0), "maintenance": False}
    return ObservedAgent(**(values | changes))


def test_the_first_patch_writes_every_owned_field_and_both_conditions() -> None:
    patch = status_patch({}, observed(), NOW, heartbeat_every=timedelta(minutes=3))
    assert patch["heartbeat"] == "OK" and patch["connection"] == "Connected" and patch["server"] == "ms-0"
    assert patch["lastHeartbeatTime"] == "2025-01-01T12:00:00Z"
    assert patch["queue"]["percentUsed"] == 10
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {HEARTBEAT_CONDITION: "True",
                                                                     CONNECTED_CONDITION: "True"}


def stored_after(patch: dict[str, Any]) -> dict[str, Any]:
    return {"maintenance": False, **patch}


def test_heartbeats_write_nothing_until_the_stored_time_is_old() -> None:
    stored = stored_after(status_patch({}, observed(), NOW, heartbeat_every=timedelta(minutes=3)))
    later = observed(last_heartbeat=NOW + timedelta(minutes=2), queue=QueueReport(9, 5000, 10_000, 1))
    assert status_patch(stored, later, NOW + timedelta(minutes=2), heartbeat_every=timedelta(minutes=3)) == {}
    due = observed(last_heartbeat=NOW + timedelta(minutes=3))
    assert set(status_patch(stored, due, NOW, heartbeat_every=timedelta(minutes=3))) == {"lastHeartbeatTime", "queue"}


def test_a_heartbeat_failure_writes_the_status_and_the_condition_at_once() -> None:
    stored = stored_after(status_patch({}, observed(), NOW, heartbeat_every=timedelta(minutes=3)))
    patch = status_patch(stored, observed(heartbeat=HeartbeatStatus.UNREACHABLE, connection=Connection.DISCONNECTED),
                         NOW + timedelta(seconds=5), heartbeat_every=timedelta(minutes=3))
    assert patch["heartbeat"] == "Unreachable" and patch["connection"] == "Disconnected"
    conditions = {c["type"]: c for c in patch["conditions"]}
    assert conditions[HEARTBEAT_CONDITION]["reason"] == "ComputerUnreachable"
    assert conditions[CONNECTED_CONDITION]["status"] == "False"


def test_conditions_of_the_operator_are_kept() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "AllReady", "message": "ok",
             "lastTransitionTime": "2025-01-01T00:00:00Z"}
    patch = status_patch({"conditions": [ready]}, observed(), NOW, heartbeat_every=timedelta(minutes=3))
    assert [c["type"] for c in patch["conditions"]] == ["Ready", HEARTBEAT_CONDITION, CONNECTED_CONDITION]
