"""The scheduler reconciles running jobs with a new plan, keeping what did not change and what the server heard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from opsmgr.agent.counters import CounterReader, Reading, UnknownCounter
from opsmgr.agent.packs import CollectionPlan, plan_from_json
from opsmgr.agent.scheduler import Context, RuleScheduler, first_due, next_due
from opsmgr.agent.sink import ListSink
from opsmgr.api.management_pack import PerformanceCounter

KEY = "Linux.Computer:web01.contoso.test"


class ScriptedReader:
    def __init__(self, values: list[float], instance: str) -> None:
        self.values = values
        self.instance = instance

    async def read(self) -> list[Reading]:
        return [Reading(self.instance, self.values.pop(0))] if self.values else []


class Script:
    """Readers that return the values a test wrote down for each counter."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}

    async def __call__(self, counter: PerformanceCounter) -> CounterReader:
        if counter.object == "Nonsense":
            raise UnknownCounter(f"counter {counter.object!r} / {counter.counter!r} is not one this agent provides")
        return ScriptedReader(self.values.setdefault((counter.object, counter.counter), []), counter.instance or "")


def pack(rules: Sequence[dict[str, Any]] = (), monitors: Sequence[dict[str, Any]] = ()) -> bytes:
    return json.dumps([{"metadata": {"name": "p"}, "spec": {
        "managementGroupRef": {"name": "g"}, "version": "1.0", "rules": list(rules), "monitors": list(monitors)}}]
    ).encode()


def cpu_rule(interval: int = 60, **optimized: Any) -> dict[str, Any]:
    performance: dict[str, Any] = {"object": "Processor", "counter": "% Processor Time", "instance": "_Total",
                                   "intervalSeconds": interval}
    if optimized:
        performance["optimizedCollection"] = optimized
    return {"name": "cpu", "performance": performance}


def cpu_monitor(critical: float = 95) -> dict[str, Any]:
    return {"name": "cpu-mon", "performance": {"object": "Processor", "counter": "% Processor Time",
                                               "instance": "_Total"},
            "warningThreshold": 80, "criticalThreshold": critical}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[RuleScheduler, ListSink, Script]]:
    sink, script = ListSink(), Script()
    scheduler = RuleScheduler(Context(sink, KEY, lambda now: False, script), tmp_path, log_poll_seconds=0.05)
    yield scheduler, sink, script
    await scheduler.close()


def plan(document: bytes) -> CollectionPlan:
    return plan_from_json(document, {})


async def test_an_unchanged_plan_keeps_every_job_and_a_changed_rule_is_replaced_alone(
        running: tuple[RuleScheduler, ListSink, Script]) -> None:
    scheduler, _, _ = running
    scheduler.apply(plan(pack([cpu_rule(), {**cpu_rule(), "name": "cpu2"}])))
    first, second = scheduler.performance_job("p/cpu"), scheduler.performance_job("p/cpu2")
    scheduler.apply(plan(pack([cpu_rule(), {**cpu_rule(), "name": "cpu2"}])))
    assert scheduler.performance_job("p/cpu") is first and scheduler.performance_job("p/cpu2") is second
    scheduler.apply(plan(pack([cpu_rule(interval=120), {**cpu_rule(), "name": "cpu2"}])))
    assert scheduler.performance_job("p/cpu") is not first and scheduler.performance_job("p/cpu2") is second
    scheduler.apply(plan(pack([])))
    assert scheduler.running == {"performance": 0, "monitors": 0, "log_files": 0}


async def test_a_performance_job_sends_what_optimized_collection_lets_through(
        running: tuple[RuleScheduler, ListSink, Script]) -> None:
    scheduler, sink, script = running
    script.values[("Processor", "% Processor Time")] = [50, 51, 70]
    scheduler.apply(plan(pack([cpu_rule(tolerance=5, toleranceType="Absolute", maximumSampleSeparation=10)])))
    job = scheduler.performance_job("p/cpu")
    assert job is not None
    await asyncio.sleep(0)  # let the job open its reader
    for _ in range(3):
        await job.sample()
    samples = [(i.performance.value, i.performance.instance_name, i.performance.object_key) for i in sink.items]
    assert samples == [(50, "_Total", KEY), (51, "_Total", KEY), (70, "_Total", KEY)]


async def test_a_changed_monitor_carries_its_reported_state_and_a_removed_one_resolves_its_alert(
        running: tuple[RuleScheduler, ListSink, Script]) -> None:
    scheduler, sink, script = running
    values = script.values.setdefault(("Processor", "% Processor Time"), [])
    scheduler.apply(plan(pack(monitors=[cpu_monitor()])))
    await asyncio.sleep(0)
    values.append(99)
    job = scheduler.monitor_job("p/cpu-mon")
    assert job is not None
    await job.sample()
    assert [i.WhichOneof("kind") for i in sink.items] == ["state", "alert"]

    scheduler.apply(plan(pack(monitors=[cpu_monitor(critical=99.5)])))
    replaced = scheduler.monitor_job("p/cpu-mon")
    assert replaced is not None and replaced is not job
    await asyncio.sleep(0)
    values.append(99)
    sink.items.clear()
    await replaced.sample()
    assert [(i.state.old_state, i.state.new_state) for i in sink.of_kind("state")] == [(3, 2)]
    assert [i.alert.resolution_state for i in sink.of_kind("alert")] == [254]

    scheduler.apply(plan(pack(monitors=[cpu_monitor()])))
    again = scheduler.monitor_job("p/cpu-mon")
    assert again is not None
    await asyncio.sleep(0)
    values.append(99)
    await again.sample()
    sink.items.clear()
    scheduler.apply(plan(pack()))
    await asyncio.sleep(0.05)
    assert [(i.alert.source, i.alert.resolution_state) for i in sink.items] == [("cpu-mon", 254)]


async def test_a_rule_that_cannot_run_is_reported_once_as_a_warning_event(
        running: tuple[RuleScheduler, ListSink, Script]) -> None:
    scheduler, sink, _ = running
    scheduler.apply(plan(pack([{"name": "odd", "performance": {"object": "Nonsense", "counter": "x"}}])))
    await asyncio.sleep(0.05)
    events = sink.of_kind("event")
    assert len(events) == 1
    assert (events[0].event.level, events[0].event.source) == (3, "odd")
    assert "rule p/odd cannot run" in events[0].event.description


async def test_a_bad_pattern_is_reported_and_the_other_rules_on_the_file_still_run(
        running: tuple[RuleScheduler, ListSink, Script], tmp_path: Path) -> None:
    scheduler, sink, _ = running
    log = str(tmp_path / "app.log")
    scheduler.apply(plan(pack([{"name": "bad", "event": {"logFile": log, "pattern": "("}},
                               {"name": "good", "event": {"logFile": log, "pattern": "ERROR"}}])))
    await asyncio.sleep(0.1)
    job = scheduler.log_job(log)
    assert job is not None and len(job.rules) == 2
    assert any("invalid pattern" in i.event.description for i in sink.of_kind("event"))


def test_a_new_job_samples_on_the_next_ten_second_mark_at_least_a_second_away() -> None:
    assert first_due(1000.0) == 1010.0
    assert first_due(1008.5) == 1010.0
    assert first_due(1009.5) == 1020.0


def test_jobs_of_one_interval_tick_together_on_the_wall_clock_grid() -> None:
    assert next_due(1010.2, 60) == 1020.0
    assert next_due(1020.0, 60) == 1080.0
    assert next_due(1234.5, 300) == 1500.0  # a tick that ran late does not shift the cadence


async def test_changed_log_rules_keep_the_files_tail_and_a_reapplied_plan_reports_its_problems_once(
        running: tuple[RuleScheduler, ListSink, Script], tmp_path: Path) -> None:
    scheduler, sink, _ = running
    log = str(tmp_path / "app.log")
    broken = {"name": "broken", "performance": {"object": "Memory", "counter": "% Used Memory"}}
    document = json.loads(pack([{"name": "errors", "event": {"logFile": log, "pattern": "ERROR"}}, broken]))
    document[0]["spec"]["overrides"] = [{"name": "bad", "rule": "broken", "parameter": "IntervalSeconds",
                                         "value": "soon"}]
    scheduler.apply(plan(json.dumps(document).encode()))
    job = scheduler.log_job(log)
    document[0]["spec"]["rules"][0]["event"]["pattern"] = "ERROR|FATAL"
    scheduler.apply(plan(json.dumps(document).encode()))
    scheduler.apply(plan(json.dumps(document).encode()))
    assert scheduler.log_job(log) is job and job is not None
    assert [r.rule.event.pattern for r in job.rules if r.rule.event is not None] == ["ERROR|FATAL"]
    await asyncio.sleep(0.05)
    problems = [i.event.description for i in sink.of_kind("event") if i.event.source == "management-packs"]
    assert len(problems) == 1 and "override bad" in problems[0]


async def test_an_unreadable_log_file_is_reported_once_while_it_keeps_being_retried(
        running: tuple[RuleScheduler, ListSink, Script], tmp_path: Path) -> None:
    scheduler, sink, _ = running
    directory = tmp_path / "app.log"
    directory.mkdir()  # reading a directory fails like an unreadable file does
    scheduler.apply(plan(pack([{"name": "errors", "event": {"logFile": str(directory), "pattern": "ERROR"}}])))
    await asyncio.sleep(0.4)
    reports = [i.event.description for i in sink.of_kind("event")]
    assert len(reports) == 1 and "cannot be read" in reports[0]
