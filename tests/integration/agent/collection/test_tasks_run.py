"""Tasks as real processes: round-trip, refusal, injection attempts, timeouts that kill the group, output limit."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from opsmgr.agent.monitors import Transition
from opsmgr.agent.sink import HealthState, ListSink
from opsmgr.agent.tasks import AllowedCommand, StateChangeTask, TaskRunner, TaskSettings
from opsmgr.api.management_pack import Task
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol import limits

ECHO = shutil.which("echo") or "/bin/echo"
PYTHON = os.path.realpath(sys.executable)


def runner(*allowed: AllowedCommand, **extra: Any) -> TaskRunner:
    tasks = TaskRunner(TaskSettings(allow=list(allowed), **extra), sink=extra.get("sink"))
    return tasks


def define(runner: TaskRunner, *tasks: dict[str, Any]) -> None:
    runner.update_tasks({body["name"]: Task.model_validate(body) for body in tasks})


def file_exists(path: Path) -> bool:
    return path.exists()


async def test_a_task_round_trip_returns_exit_code_and_output() -> None:
    tasks = runner(AllowedCommand(command=ECHO))
    define(tasks, {"name": "say", "command": "echo", "arguments": ["hello", "{who}"],
                   "parameters": [{"name": "who", "required": True}]})
    result = await tasks(pb.TaskRequest(task_id="t1", task="say", parameters={"who": "world"}))
    assert (result.task_id, result.status, result.exit_code, result.output, result.output_truncated) == (
        "t1", pb.TaskResult.STATUS_SUCCEEDED, 0, b"hello world\n", False)
    assert result.finished_at.ToDatetime() >= result.started_at.ToDatetime()


async def test_a_failing_command_reports_its_exit_code() -> None:
    tasks = runner(AllowedCommand(command=PYTHON))
    define(tasks, {"name": "fail", "command": PYTHON, "arguments": ["-c", "import sys; print('bad'); sys.exit(3)"]})
    result = await tasks(pb.TaskRequest(task_id="t2", task="fail"))
    assert (result.status, result.exit_code, result.output) == (pb.TaskResult.STATUS_FAILED, 3, b"bad\n")


async def test_a_pack_cannot_make_the_agent_run_a_command_outside_its_allow_list(tmp_path: Path) -> None:
    victim = tmp_path / "keep-me"
    await asyncio.to_thread(victim.write_text, "precious")
    tasks = runner(AllowedCommand(command=ECHO))
    define(tasks, {"name": "wipe", "command": "rm", "arguments": ["-f", str(victim)]})
    result = await tasks(pb.TaskRequest(task_id="t3", task="wipe", command=["rm", "-f", str(victim)]))
    assert result.status == pb.TaskResult.STATUS_REFUSED
    assert "allow-list" in result.message
    assert await asyncio.to_thread(file_exists, victim)


@pytest.mark.parametrize("payload", [
    "; touch {marker}", "$(touch {marker})", "`touch {marker}`", "x\ntouch {marker}", "x && touch {marker}",
    "x | touch {marker}",
])
async def test_parameter_injection_runs_nothing_extra(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "injected"
    value = payload.format(marker=marker)
    tasks = runner(AllowedCommand(command=ECHO))
    define(tasks, {"name": "say", "command": "echo", "arguments": ["{text}"],
                   "parameters": [{"name": "text", "required": True}]})
    result = await tasks(pb.TaskRequest(task_id="t4", task="say", parameters={"text": value}))
    assert result.status == pb.TaskResult.STATUS_SUCCEEDED
    assert result.output == value.encode() + b"\n"  # echoed back literally, as one argument
    assert not await asyncio.to_thread(file_exists, marker)


async def test_a_timed_out_task_is_killed_with_its_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
              f"open({str(pidfile)!r}, 'w').write(str(child.pid)); print('started', flush=True); time.sleep(60)")
    tasks = runner(AllowedCommand(command=PYTHON))
    define(tasks, {"name": "hang", "command": PYTHON, "arguments": ["-c", script], "timeoutSeconds": 1})
    started = asyncio.get_running_loop().time()
    result = await tasks(pb.TaskRequest(task_id="t5", task="hang"))
    assert asyncio.get_running_loop().time() - started < 10
    assert result.status == pb.TaskResult.STATUS_TIMED_OUT
    assert result.output == b"started\n"
    child = int(await asyncio.to_thread(pidfile.read_text))
    await asyncio.sleep(0.2)
    assert not await asyncio.to_thread(_alive, child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_output_is_cut_at_the_limit_and_marked_truncated() -> None:
    tasks = runner(AllowedCommand(command=PYTHON))
    define(tasks, {"name": "flood", "command": PYTHON,
                   "arguments": ["-c", "import sys; sys.stdout.write('x' * 1_000_000)"]})
    result = await tasks(pb.TaskRequest(task_id="t6", task="flood"))
    assert result.status == pb.TaskResult.STATUS_SUCCEEDED
    assert len(result.output) == limits.MAX_TASK_OUTPUT_BYTES and result.output_truncated


async def test_the_task_gets_a_minimal_environment() -> None:
    os.environ["OPSMGR_TEST_SECRET"] = "must-not-leak"
    try:
        tasks = runner(AllowedCommand(command=PYTHON))
        define(tasks, {"name": "env", "command": PYTHON,
                       "arguments": ["-c", "import os; print(sorted(os.environ))"]})
        result = await tasks(pb.TaskRequest(task_id="t7", task="env"))
    finally:
        del os.environ["OPSMGR_TEST_SECRET"]
    assert b"OPSMGR_TEST_SECRET" not in result.output


async def test_a_state_change_runs_its_diagnostic_and_records_the_output_as_an_event() -> None:
    sink = ListSink()
    tasks = TaskRunner(TaskSettings(allow=[AllowedCommand(command=ECHO)], on_state_change=[
        StateChangeTask(monitor="processor-utilization", state="Critical", task="diag",
                        parameters={"what": "top"})]), sink=sink, object_key="Linux.Computer:web01")
    define(tasks, {"name": "diag", "command": "echo", "arguments": ["diagnosing", "{what}"],
                   "parameters": [{"name": "what"}]})
    now = datetime.now(UTC)
    tasks.on_transition(Transition(now, "processor-utilization", HealthState.HEALTHY, HealthState.WARNING, 85),
                        "processor-utilization")
    tasks.on_transition(Transition(now, "processor-utilization", HealthState.WARNING, HealthState.CRITICAL, 99),
                        "processor-utilization")
    for _ in range(100):
        if sink.items:
            break
        await asyncio.sleep(0.05)
    await tasks.close()
    assert len(sink.items) == 1
    event = sink.items[0].event
    assert (event.source, event.channel, event.level) == ("diag", "opsmgr.tasks", 4)
    assert event.description.endswith("diagnosing top\n")
