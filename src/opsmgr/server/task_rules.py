"""AgentTask decisions of the management server (pure): which runs it may deliver, the TaskRequest for a run, the
status that says it runs, whether a TaskResult from a stream is one this stream was sent, and the status and Event
that report the result.

A run is delivered once: the server marks it Running with a patch guarded by the resourceVersion it saw as
Pending, and sends the TaskRequest only after that patch succeeded, so of several servers (or two tries of one)
exactly one delivers. An agent may report only the runs sent on its own stream: the task id alone proves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from opsmgr.api.agent_task import OUTPUT_LIMIT, AgentTask, TaskPhase
from opsmgr.api.conditions import Condition, ConditionStatus, set_condition
from opsmgr.api.management_pack import Task
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.admission import Refusal

READY = "Ready"  # the operator's top-level condition of an AgentTask; the server keeps it in step with the phase
TASK_ID_SHOWN = 200  # an agent's forged id is quoted in logs only this far

_PHASES = {pb.TaskResult.STATUS_SUCCEEDED: TaskPhase.SUCCEEDED, pb.TaskResult.STATUS_FAILED: TaskPhase.FAILED,
           pb.TaskResult.STATUS_TIMED_OUT: TaskPhase.TIMED_OUT, pb.TaskResult.STATUS_REFUSED: TaskPhase.FAILED}
_REASONS = {pb.TaskResult.STATUS_SUCCEEDED: "TaskSucceeded", pb.TaskResult.STATUS_FAILED: "TaskFailed",
            pb.TaskResult.STATUS_TIMED_OUT: "TaskTimedOut", pb.TaskResult.STATUS_REFUSED: "TaskRefused"}


@dataclass(frozen=True, slots=True)
class PendingRun:
    """An AgentTask for one agent that nobody delivered yet, as read (with the resourceVersion read)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int | None
    agent: str  # the Agent's resource name
    task: AgentTask


@dataclass(frozen=True, slots=True)
class SentTask:
    """A run this server sent on one stream: what a TaskResult with its task id may report on."""

    task_id: str
    namespace: str
    name: str
    uid: str
    agent: str  # the FQDN the stream speaks for


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """Why a pending run is not sent (the operator marks such runs Failed with the same cause)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Announcement:
    """A Kubernetes Event on the AgentTask."""

    warning: bool
    reason: str
    message: str


def task_id(namespace: str, name: str, uid: str) -> str:
    """Names one AgentTask object for good: a task deleted and created again under its name has another uid."""
    return f"{namespace}/{name}/{uid}"


def pending_run(body: Mapping[str, Any]) -> PendingRun | None:
    """The run to deliver, when `body` is an AgentTask for one agent that is still Pending; else None.

    Selector parents are not runs (their children, which name one agent each, are); a run being deleted is not
    started.
    """
    metadata = body.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return None
    if (body.get("status") or {}).get("phase", TaskPhase.PENDING.value) != TaskPhase.PENDING.value:
        return None
    try:
        task = AgentTask.from_body(body)
    except ValidationError:
        return None  # the API server's schema admitted it, so only an older schema's object: the operator reports it
    if not task.spec.agent or task.spec.agent_selector is not None:
        return None
    return PendingRun(str(metadata.get("namespace", "")), str(metadata.get("name", "")), str(metadata.get("uid", "")),
                      str(metadata.get("resourceVersion", "")), metadata.get("generation"), task.spec.agent, task)


def task_request(run: PendingRun, definition: Task | None) -> pb.TaskRequest | Undeliverable:
    """The TaskRequest for `run` from the pack's task `definition` (None: the pack or the task is missing).

    The command goes as the pack defines it, placeholders and all: the agent fills them in itself, each parameter as
    one whole argument, and checks the command against its own copy of the pack and its allow-list.
    """
    reference = run.task.spec.task
    if definition is None:
        return Undeliverable(f"ManagementPack {reference.management_pack!r} or its task {reference.name!r} does not "
                             "exist; the operator marks the run Failed")
    supplied = run.task.spec.parameter_values()
    declared = {parameter.name: parameter for parameter in definition.parameters}
    unknown = sorted(set(supplied) - set(declared))
    if unknown:
        return Undeliverable(f"spec.parameters names {', '.join(unknown)}, which task {definition.name!r} does not "
                             "take; the operator marks the run Failed")
    missing = [p.name for p in definition.parameters if p.required and p.default is None and p.name not in supplied]
    if missing:
        return Undeliverable(f"spec.parameters lacks {', '.join(missing)}, which task {definition.name!r} requires; "
                             "the operator marks the run Failed")
    parameters = {name: supplied.get(name, p.default) for name, p in declared.items()}
    return pb.TaskRequest(
        task_id=task_id(run.namespace, run.name, run.uid), task=definition.name,
        command=[definition.command, *definition.arguments],
        parameters={name: value for name, value in parameters.items() if value is not None},
        timeout_seconds=run.task.spec.timeout_seconds or definition.timeout_seconds)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(stored: Mapping[str, Any], phase: TaskPhase, message: str, generation: int | None,
           now: datetime) -> list[dict[str, Any]]:
    conditions = [Condition.model_validate(c) for c in stored.get("conditions") or []]
    ready = Condition.of(READY, ConditionStatus.TRUE if phase.finished else ConditionStatus.FALSE, phase.value,
                         message, generation=generation, now=now)
    return [c.to_dict() for c in set_condition(conditions, ready)]


def running_patch(run: PendingRun, stored_status: Mapping[str, Any], server: str, now: datetime) -> dict[str, Any]:
    """The guarded status patch that claims the run for this server: it fails (409) once anybody else changed it."""
    return {"metadata": {"resourceVersion": run.resource_version},
            "status": {"phase": TaskPhase.RUNNING.value, "startTime": _stamp(now),
                       "conditions": _ready(stored_status, TaskPhase.RUNNING,
                                            f"the run is running on agent {run.agent} (sent by {server})",
                                            run.generation, now)}}


def unclaim_patch(resource_version: str, stored_status: Mapping[str, Any], generation: int | None,
                  now: datetime) -> dict[str, Any]:
    """Give a claimed run back (Pending) when its agent's stream was gone before anything was sent on it."""
    return {"metadata": {"resourceVersion": resource_version},
            "status": {"phase": TaskPhase.PENDING.value, "startTime": None,
                       "conditions": _ready(stored_status, TaskPhase.PENDING, "waiting for the agent to connect",
                                            generation, now)}}


def accept_result(reported_id: str, sent: Mapping[str, SentTask]) -> SentTask | Refusal:
    """The run a TaskResult reports on, if this stream was sent it and has not reported it yet."""
    found = sent.get(reported_id)
    if found is None:
        return Refusal("UnknownTask", f"task result for {reported_id[:TASK_ID_SHOWN]!r}, which this server did not "
                                      "send on this stream (or which was already reported); ignored")
    return found


def result_output(result: pb.TaskResult) -> tuple[str, bool]:
    """The output as the status holds it: text (undecodable bytes replaced), cut at the API's limit."""
    if result.status == pb.TaskResult.STATUS_REFUSED:
        text = ("The agent refused to run this task under its own allow-list and task rules: "
                f"{result.message or 'no reason given'}")
        return text[:OUTPUT_LIMIT], len(text) > OUTPUT_LIMIT
    text = bytes(result.output).decode("utf-8", errors="replace")
    if not text and result.message:
        text = result.message  # e.g. the command could not be started: the only thing there is to read
    return text[:OUTPUT_LIMIT], result.output_truncated or len(text) > OUTPUT_LIMIT


def _time(stamp: Any, present: bool, fallback: datetime) -> datetime:
    if not present:
        return fallback
    try:
        return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError):
        return fallback  # a time protobuf cannot represent says nothing


def _summary(result: pb.TaskResult, phase: TaskPhase, agent: str) -> str:
    if result.status == pb.TaskResult.STATUS_REFUSED:
        return f"the run failed: agent {agent} refused it ({result.message or 'no reason given'})"
    detail = result.message or f"exit code {result.exit_code}"
    return f"the run {'timed out' if phase is TaskPhase.TIMED_OUT else phase.value.lower()} on {agent}: {detail}"


def result_patch(body: Mapping[str, Any], sent: SentTask, result: pb.TaskResult,
                 now: datetime) -> dict[str, Any] | Undeliverable:
    """The guarded status patch reporting `result` on the AgentTask `body` (as read now), or why none is written."""
    metadata = body.get("metadata") or {}
    if metadata.get("uid") != sent.uid:
        return Undeliverable(f"AgentTask {sent.namespace}/{sent.name} was deleted (and maybe created again) since "
                             "the run was sent; the result is not written on another run")
    stored = body.get("status") or {}
    if TaskPhase(stored.get("phase", TaskPhase.PENDING.value)).finished:
        return Undeliverable(f"AgentTask {sent.namespace}/{sent.name} already ended {stored.get('phase')} (the "
                             "operator times out runs nobody reported on); the late result is not written")
    phase = _PHASES.get(result.status)
    if phase is None:
        return Undeliverable(f"the agent reported status {result.status}, which this server does not know")
    output, truncated = result_output(result)
    started = _time(result.started_at, result.HasField("started_at"), now)
    finished = _time(result.finished_at, result.HasField("finished_at"), now)
    status: dict[str, Any] = {
        "phase": phase.value, "output": output, "outputTruncated": truncated,
        "startTime": _stamp(started), "completionTime": _stamp(max(finished, started)),
        "exitCode": None if result.status == pb.TaskResult.STATUS_REFUSED else result.exit_code,
        "conditions": _ready(stored, phase, _summary(result, phase, sent.agent), metadata.get("generation"), now)}
    return {"metadata": {"resourceVersion": metadata.get("resourceVersion")}, "status": status}


def result_announcement(sent: SentTask, result: pb.TaskResult) -> Announcement:
    phase = _PHASES.get(result.status, TaskPhase.FAILED)
    return Announcement(warning=result.status != pb.TaskResult.STATUS_SUCCEEDED,
                        reason=_REASONS.get(result.status, "TaskFailed"),
                        message=_summary(result, phase, sent.agent)[:1024])
