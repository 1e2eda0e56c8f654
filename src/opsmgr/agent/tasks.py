"""Tasks: run a management pack's command on request, or when a monitor changes state, within the agent's own rules.

A management pack names a command; the agent runs it only if its own allow-list (its configuration file, owned by
whoever installed the agent) permits that executable, so a pack alone can never make an agent run something new.
Parameters become whole argv elements (an argument that is exactly "{name}"), never pass through a shell, and may
not start with "-" unless the allow-list entry says options are fine. The process runs in its own session with a
minimal environment; at the timeout its whole process group is killed; output is cut at
`limits.MAX_TASK_OUTPUT_BYTES` and marked truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from opsmgr.agent import sink
from opsmgr.agent.monitors import Transition
from opsmgr.agent.sink import HealthState, ItemSink
from opsmgr.api.management_pack import EventLevel, Task
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol import limits

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 8192
TASK_EVENT_NUMBER = 8001  # event id of a task run on a monitor's state change


def _absolute(value: str) -> str:
    if not os.path.isabs(value):
        raise ValueError("must be an absolute path, e.g. /usr/bin/systemctl, so PATH cannot change what runs")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCommand(_Section):
    """One executable the agent may run for tasks."""

    command: Annotated[str, AfterValidator(_absolute)]
    arguments_prefix: list[str] = Field(default_factory=list, max_length=32)
    """When set, the task's arguments must begin with exactly these (e.g. [restart] for systemctl)."""
    allow_option_values: bool = False
    """Whether a parameter value may begin with "-" (and so be read as an option by the command)."""


class StateChangeTask(_Section):
    """Run a pack's task when a monitor enters a state: a diagnostic (output recorded as an event) or a recovery."""

    monitor: str = Field(min_length=1, max_length=128)
    state: Literal["Healthy", "Warning", "Critical"]
    task: str = Field(min_length=1, max_length=128)
    parameters: dict[str, str] = Field(default_factory=dict, max_length=16)


class TaskSettings(_Section):
    """The agent's own task rules: its `tasks:` section."""

    allow: list[AllowedCommand] = Field(default_factory=list, max_length=256)
    on_state_change: list[StateChangeTask] = Field(default_factory=list, max_length=256)
    path: str = SAFE_PATH
    """PATH used to find a pack's command given by name, and passed to the task."""
    max_concurrent: int = Field(default=4, ge=1, le=64)


@dataclass(frozen=True, slots=True)
class Approved:
    argv: list[str]
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


def expand_arguments(task: Task, supplied: Mapping[str, str], *, options_allowed: bool) -> list[str] | Refused:
    """The task's arguments with parameters filled in as whole elements (pure)."""
    declared = {p.name: p for p in task.parameters}
    unknown = sorted(set(supplied) - set(declared))
    if unknown:
        return Refused(f"task {task.name} has no parameter {', '.join(unknown)}; it takes "
                       f"{', '.join(sorted(declared)) or 'none'}")
    values: dict[str, str] = {}
    for name, parameter in declared.items():
        value = supplied.get(name, parameter.default)
        if value is None:
            if parameter.required:
                return Refused(f"task {task.name} needs parameter {name}: supply it in the AgentTask")
            continue
        if "\0" in value:
            return Refused(f"parameter {name} of task {task.name} contains a NUL byte, which no argument can hold")
        if value.startswith("-") and not options_allowed:
            return Refused(f"parameter {name} of task {task.name} begins with '-' and would be read as an option; "
                           "the agent's allow-list entry must set allowOptionValues to permit that")
        values[name] = value
    argv: list[str] = []
    for argument in task.arguments:
        match = PLACEHOLDER.match(argument)
        if match is None:
            argv.append(argument)  # literal, braces and all: templating fills whole elements only
            continue
        name = match.group(1)
        if name not in declared:
            return Refused(f"task {task.name} refers to {{{name}}}, which is not one of its parameters; fix the pack")
        if name in values:
            argv.append(values[name])
    return argv


def resolve_command(command: str, search_path: str) -> str | None:
    """The real path of the executable a pack's command names (absolute, or found on `search_path`)."""
    found = command if os.path.isabs(command) else shutil.which(command, path=search_path)
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        return None
    return os.path.realpath(found)


def allow_list_entry(task: Task, settings: TaskSettings) -> tuple[str, AllowedCommand] | Refused:
    """The executable the task runs and the allow-list entry that permits it."""
    executable = resolve_command(task.command, settings.path)
    if executable is None:
        return Refused(f"command {task.command!r} of task {task.name} is not an executable file on this computer")
    entry = next((a for a in settings.allow if os.path.realpath(a.command) == executable), None)
    if entry is None:
        return Refused(f"{executable} (task {task.name}) is not on this agent's allow-list; add it to tasks.allow "
                       "in the agent's configuration to permit it")
    if task.arguments[: len(entry.arguments_prefix)] != entry.arguments_prefix:
        return Refused(f"task {task.name} runs {executable} with arguments {task.arguments}, but the allow-list "
                       f"permits it only with arguments beginning {entry.arguments_prefix}")
    return executable, entry


def authorize(request: pb.TaskRequest, tasks: Mapping[str, Task], settings: TaskSettings) -> Approved | Refused:
    """Whether and how to run a request: the pack must define the task, the allow-list must permit it (pure but
    for looking the executable up on disk)."""
    task = tasks.get(request.task)
    if task is None:
        return Refused(f"no management pack of this agent defines task {request.task!r}")
    template = [task.command, *task.arguments]
    entry = allow_list_entry(task, settings)
    if isinstance(entry, Refused):
        return entry
    executable, allowed = entry
    arguments = expand_arguments(task, dict(request.parameters), options_allowed=allowed.allow_option_values)
    if isinstance(arguments, Refused):
        return arguments
    argv = [executable, *arguments]
    sent = list(request.command)
    if sent and sent not in (template, [task.command, *arguments]):
        return Refused(f"the request's command {sent} is not task {task.name}'s ({template}); the pack changed "
                       "since the request was made, or the request was forged")
    timeout = request.timeout_seconds or task.timeout_seconds
    return Approved(argv, float(min(timeout, task.timeout_seconds, 3600)))


@dataclass(frozen=True, slots=True)
class Execution:
    exit_code: int
    output: bytes
    truncated: bool
    timed_out: bool
    started_at: datetime
    finished_at: datetime


async def _collect(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of `stream`; the rest is read and dropped, so the task never blocks on a full pipe."""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(READ_CHUNK):
        room = limit - len(kept)
        if len(chunk) > room:
            truncated = True
        kept += chunk[:max(room, 0)]
    return bytes(kept), truncated


async def execute(argv: Sequence[str], timeout_seconds: float, *, search_path: str = SAFE_PATH,
                  output_limit: int = limits.MAX_TASK_OUTPUT_BYTES) -> Execution:
    """Run `argv` (no shell) with stdout and stderr merged, killing its process group at the timeout."""
    started = datetime.now(UTC)
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True, cwd="/", env={"PATH": search_path, "LANG": "C.UTF-8"})
    assert process.stdout is not None
    reading = asyncio.ensure_future(_collect(process.stdout, output_limit))
    timed_out = finished = False
    try:
        async with asyncio.timeout(timeout_seconds):
            await process.wait()
            await reading  # children that keep the pipe open count against the timeout too
        finished = True
    except TimeoutError:
        timed_out = True
    finally:
        if not finished:
            # It ran in a new session, so its pid names its process group: the children go with it. The group
            # still has members here (someone holds the pipe or the leader runs), so the id cannot be reused yet.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        output, truncated = await reading
    return Execution(process.returncode if process.returncode is not None else -1, output, truncated, timed_out,
                     started, datetime.now(UTC))


class TaskRunner:
    """What the connection calls for a TaskRequest, and what runs diagnostics and recoveries on state changes."""

    def __init__(self, settings: TaskSettings, *, sink: ItemSink | None = None, object_key: str = "") -> None:
        self.settings = settings
        self.tasks: Mapping[str, Task] = {}
        self._sink = sink
        self._object_key = object_key
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._background: set[asyncio.Task[None]] = set()

    def update_tasks(self, tasks: Mapping[str, Task]) -> None:
        self.tasks = dict(tasks)

    async def __call__(self, request: pb.TaskRequest) -> pb.TaskResult:
        return await self.run(request)

    async def run(self, request: pb.TaskRequest) -> pb.TaskResult:
        decision = authorize(request, self.tasks, self.settings)
        now = datetime.now(UTC)
        if isinstance(decision, Refused):
            log.warning("task %s (%s) refused: %s", request.task_id, request.task, decision.reason)
            return pb.TaskResult(task_id=request.task_id, status=pb.TaskResult.STATUS_REFUSED, message=decision.reason,
                                 started_at=now, finished_at=now)
        async with self._slots:
            log.info("task %s (%s): running %s", request.task_id, request.task, decision.argv)
            try:
                run = await execute(decision.argv, decision.timeout_seconds, search_path=self.settings.path)
            except OSError as error:
                return pb.TaskResult(task_id=request.task_id, status=pb.TaskResult.STATUS_FAILED,
                                     message=f"could not start {decision.argv[0]}: {error.strerror}",
                                     started_at=now, finished_at=datetime.now(UTC))
        if run.timed_out:
            status, message = pb.TaskResult.STATUS_TIMED_OUT, f"stopped after {decision.timeout_seconds:g} s"
        elif run.exit_code == 0:
            status, message = pb.TaskResult.STATUS_SUCCEEDED, ""
        else:
            status, message = pb.TaskResult.STATUS_FAILED, f"exited with {run.exit_code}"
        return pb.TaskResult(task_id=request.task_id, status=status, exit_code=run.exit_code, output=run.output,
                             output_truncated=run.truncated, started_at=run.started_at, finished_at=run.finished_at,
                             message=message)

    def on_transition(self, transition: Transition, monitor_name: str) -> None:
        """Start the tasks configured for the state `monitor_name` entered; their results become events."""
        state = HealthState(transition.new).name.title()
        for trigger in self.settings.on_state_change:
            if trigger.monitor == monitor_name and trigger.state == state:
                job = asyncio.create_task(self._triggered(trigger, transition))
                self._background.add(job)
                job.add_done_callback(self._background.discard)

    async def _triggered(self, trigger: StateChangeTask, transition: Transition) -> None:
        request = pb.TaskRequest(task_id=f"{trigger.monitor}:{state_name(transition.new)}:"
                                         f"{transition.at.isoformat()}", task=trigger.task,
                                 parameters=trigger.parameters)
        result = await self.run(request)
        if self._sink is None:
            return
        level = EventLevel.INFORMATION if result.status == pb.TaskResult.STATUS_SUCCEEDED else EventLevel.WARNING
        text = result.output.decode("utf-8", errors="replace")
        description = (f"task {trigger.task} on {trigger.monitor} entering {state_name(transition.new)}: "
                       f"{pb.TaskResult.Status.Name(result.status)} {result.message}".rstrip() + f"\n{text}")
        await self._sink([sink.event(result.finished_at.ToDatetime(tzinfo=UTC), object_key=self._object_key,
                                     channel="opsmgr.tasks", source=trigger.task, number=TASK_EVENT_NUMBER,
                                     level=level, description=description)])

    async def close(self) -> None:
        for job in list(self._background):
            job.cancel()
        for job in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await job


def state_name(state: int) -> str:
    return HealthState(state).name.title()
