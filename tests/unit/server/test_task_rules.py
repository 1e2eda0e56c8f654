"""The server's AgentTask decisions: which runs it delivers, the TaskRequest, the claim, which results a stream may
report, and the status and Event each result becomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opsmgr.api.agent_task import OUTPUT_LIMIT
from opsmgr.api.management_pack import Task
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.admission import Refusal
from opsmgr.server.task_rules import (
    PendingRun,
    SentTask,
    Undeliverable,
    accept_result,
    pending_run,
    result_announcement,
    result_patch,
    running_patch,
    task_id,
    task_request,
    unclaim_patch,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
RESTART = Task.model_validate({
    "name": "restart", "command": "/usr/bin/systemctl", "arguments": ["restart", "{unit}", "{mode}"],
    "parameters": [{"name": "unit", "required": True}, {"name": "mode", "default": "--no-block"},
                   {"name": "note"}],
    "timeoutSeconds": 120})


def body(phase: str | None = None, **spec: Any) -> dict[str, Any]:
    status = {"phase": phase} if phase else {}
    return {"apiVersion": "opsmgr.io/v1alpha1", "kind": "AgentTask",
            "metadata": {"name": "restart-web", "namespace": "ops", "uid": "u-1", "resourceVersion": "41",
                         "generation": 1, **spec.pop("metadata", {})},
            "spec": {"task": {"managementPack": "linux", "name": "restart"}, **spec}, "status": status}


def run(**spec: Any) -> PendingRun:
    found = pending_run(body(agent=spec.pop("agent", "web01"), **spec))
    assert found is not None
    return found


def sent() -> SentTask:
    return SentTask(task_id("ops", "restart-web", "u-1"), "ops", "restart-web", "u-1", "web01.contoso.test")


def result(status: pb.TaskResult.Status, **fields: Any) -> pb.TaskResult:
    started = fields.pop("started", NOW - timedelta(seconds=3))
    finished = fields.pop("finished", NOW - timedelta(seconds=1))
    return pb.TaskResult(task_id=sent().task_id, status=status, started_at=started, finished_at=finished, **fields)


def test_a_pending_run_for_one_agent_is_delivered_and_nothing_else_is() -> None:
    assert run().agent == "web01" and run().resource_version == "41"
    assert pending_run(body(agent="web01")) is not None  # no status yet: the operator has not written Pending
    assert pending_run(body("Running", agent="web01")) is None
    assert pending_run(body("Succeeded", agent="web01")) is None
    assert pending_run(body(agentSelector={"matchLabels": {"tier": "web"}})) is None  # its children are the runs
    assert pending_run(body(agent="web01", metadata={"deletionTimestamp": "2025-01-01T00:00:00Z"})) is None


def test_the_request_carries_the_pack_command_unexpanded_and_parameters_with_defaults() -> None:
    request = task_request(run(parameters=[{"name": "unit", "value": "nginx.service"}]), RESTART)
    assert isinstance(request, pb.TaskRequest)
    assert request.task_id == "ops/restart-web/u-1"
    assert (request.task, list(request.command)) == ("restart", ["/usr/bin/systemctl", "restart", "{unit}", "{mode}"])
    assert dict(request.parameters) == {"unit": "nginx.service", "mode": "--no-block"}
    assert request.timeout_seconds == 120


def test_the_runs_own_timeout_wins_over_the_tasks() -> None:
    request = task_request(run(parameters=[{"name": "unit", "value": "x"}], timeoutSeconds=5), RESTART)
    assert isinstance(request, pb.TaskRequest) and request.timeout_seconds == 5


def test_a_parameter_value_travels_verbatim() -> None:
    hostile = "x; touch /tmp/pwned $(id) `id`"
    request = task_request(run(parameters=[{"name": "unit", "value": hostile}]), RESTART)
    assert isinstance(request, pb.TaskRequest) and request.parameters["unit"] == hostile


def test_a_run_the_operator_will_fail_is_not_delivered() -> None:
    assert isinstance(task_request(run(), None), Undeliverable)
    missing = task_request(run(), RESTART)
    assert isinstance(missing, Undeliverable) and "unit" in missing.reason
    unknown = task_request(run(parameters=[{"name": "unit", "value": "x"}, {"name": "shell", "value": "sh"}]),
                           RESTART)
    assert isinstance(unknown, Undeliverable) and "shell" in unknown.reason


def test_the_claim_is_guarded_by_the_resource_version_read_as_pending() -> None:
    patch = running_patch(run(), {}, "ms-0", NOW)
    assert patch["metadata"] == {"resourceVersion": "41"}
    assert (patch["status"]["phase"], patch["status"]["startTime"]) == ("Running", "2025-01-01T12:00:00Z")
    ready = patch["status"]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Running")
    back = unclaim_patch("42", patch["status"], 1, NOW)
    assert back["metadata"] == {"resourceVersion": "42"}
    assert (back["status"]["phase"], back["status"]["startTime"]) == ("Pending", None)


def test_a_stream_may_report_only_the_runs_it_was_sent() -> None:
    on_stream = {sent().task_id: sent()}
    assert accept_result(sent().task_id, on_stream) == sent()
    forged = accept_result("ops/someone-elses-task/u-9", on_stream)
    assert isinstance(forged, Refusal) and forged.reason == "UnknownTask"
    assert "someone-elses-task" in forged.message
    assert isinstance(accept_result(sent().task_id, {}), Refusal)  # nothing sent on this stream (or reported already)
    long = accept_result("x" * 100_000, on_stream)
    assert isinstance(long, Refusal) and len(long.message) < 400


def test_success_reports_exit_code_output_and_the_agents_times() -> None:
    patch = result_patch(body("Running", agent="web01"), sent(), result(pb.TaskResult.STATUS_SUCCEEDED,
                                                                         output=b"active\n"), NOW)
    assert not isinstance(patch, Undeliverable)
    status = patch["status"]
    assert patch["metadata"] == {"resourceVersion": "41"}
    assert (status["phase"], status["exitCode"], status["output"], status["outputTruncated"]) == (
        "Succeeded", 0, "active\n", False)
    assert (status["startTime"], status["completionTime"]) == ("2025-01-01T11:59:57Z", "2025-01-01T11:59:59Z")
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")


def test_a_failure_keeps_its_exit_code_and_a_timeout_is_timed_out() -> None:
    failed = result_patch(body("Running"), sent(), result(pb.TaskResult.STATUS_FAILED, exit_code=3, output=b"bad\n",
                                                          message="exited with 3"), NOW)
    timed = result_patch(body("Running"), sent(), result(pb.TaskResult.STATUS_TIMED_OUT, exit_code=-9), NOW)
    assert not isinstance(failed, Undeliverable) and not isinstance(timed, Undeliverable)
    assert (failed["status"]["phase"], failed["status"]["exitCode"], failed["status"]["output"]) == (
        "Failed", 3, "bad\n")
    assert timed["status"]["phase"] == "TimedOut"


def test_a_refusal_fails_the_run_saying_the_agents_allow_list_refused_it() -> None:
    reason = "/usr/bin/rm (task wipe) is not on this agent's allow-list; add it to tasks.allow"
    patch = result_patch(body("Running"), sent(), result(pb.TaskResult.STATUS_REFUSED, message=reason), NOW)
    assert not isinstance(patch, Undeliverable)
    assert patch["status"]["phase"] == "Failed" and patch["status"]["exitCode"] is None
    assert "allow-list" in patch["status"]["output"] and reason in patch["status"]["output"]
    event = result_announcement(sent(), result(pb.TaskResult.STATUS_REFUSED, message=reason))
    assert (event.warning, event.reason) == (True, "TaskRefused") and reason in event.message


def test_output_is_decoded_with_replacement_and_cut_at_the_api_limit() -> None:
    garbled = result_patch(body("Running"), sent(), result(pb.TaskResult.STATUS_SUCCEEDED, output=b"ok \xff\n"), NOW)
    assert not isinstance(garbled, Undeliverable) and garbled["status"]["output"] == "ok \ufffd\n"
    flood = result_patch(body("Running"), sent(), result(pb.TaskResult.STATUS_SUCCEEDED,
                                                         output=b"x" * (OUTPUT_LIMIT + 10)), NOW)
    assert not isinstance(flood, Undeliverable)
    assert len(flood["status"]["output"]) == OUTPUT_LIMIT and flood["status"]["outputTruncated"] is True
    cut_by_agent = result_patch(body("Running"), sent(), result(pb.TaskResult.STATUS_SUCCEEDED, output=b"x",
                                                                output_truncated=True), NOW)
    assert not isinstance(cut_by_agent, Undeliverable) and cut_by_agent["status"]["outputTruncated"] is True


def test_a_late_result_or_one_for_a_recreated_task_is_not_written() -> None:
    done = result_patch(body("TimedOut"), sent(), result(pb.TaskResult.STATUS_SUCCEEDED), NOW)
    assert isinstance(done, Undeliverable) and "TimedOut" in done.reason
    recreated = result_patch(body("Running", metadata={"uid": "u-2"}), sent(), result(pb.TaskResult.STATUS_SUCCEEDED),
                             NOW)
    assert isinstance(recreated, Undeliverable) and "deleted" in recreated.reason


def test_an_unknown_status_from_the_agent_is_not_written() -> None:
    assert isinstance(result_patch(body("Running"), sent(), result(pb.TaskResult.STATUS_UNSPECIFIED), NOW),
                      Undeliverable)


def test_a_success_event_is_normal() -> None:
    event = result_announcement(sent(), result(pb.TaskResult.STATUS_SUCCEEDED))
    assert (event.warning, event.reason) == (False, "TaskSucceeded") and "web01.contoso.test" in event.message
