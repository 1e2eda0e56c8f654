"""Runs the plan: each performance rule and monitor on its own interval, each log file on a short poll.

`RuleScheduler.apply(plan)` reconciles the running jobs with a new plan without a restart: jobs whose definition
is unchanged keep running untouched (their optimized-collection and monitor state intact), changed ones are
replaced, removed ones stop. A replaced monitor carries over what the server last heard (its state and open
alert); a removed one resolves its open alert. Log rules are grouped by file, and a file's tail survives any change
to the rules that read it, so no line is lost or read twice across a pack update.

A rule that cannot run (an unknown counter, a bad pattern) is reported once as a Warning event on the computer, so
the people who wrote the pack see it in the console, and the other rules run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from opsmgr.agent import sink
from opsmgr.agent.counters import CounterReader, UnknownCounter
from opsmgr.agent.logfiles import LogFileTail
from opsmgr.agent.monitors import ReportedHealth, ThresholdMonitor
from opsmgr.agent.optimized import OptimizedCollector, Sample
from opsmgr.agent.packs import CollectionPlan, PackMonitor, PackRule, diff_keyed
from opsmgr.agent.sink import ItemSink
from opsmgr.agent.tasks import TaskRunner
from opsmgr.api.management_pack import EventLevel, PerformanceCounter
from opsmgr.protocol import agent_channel_pb2 as pb

log = logging.getLogger(__name__)

AGENT_CHANNEL = "opsmgr.agent"
RULE_PROBLEM_EVENT = 8000  # event id of "a rule or monitor of a pack cannot run here"
FIRST_SAMPLE_GRID_SECONDS = 10.0

ReaderFactory = Callable[[PerformanceCounter], Awaitable[CounterReader]]


def first_due(now: float) -> float:
    """When a new job first samples: on the next 10 s mark at least a second away, not a whole interval later."""
    return math.ceil((now + 1.0) / FIRST_SAMPLE_GRID_SECONDS) * FIRST_SAMPLE_GRID_SECONDS


def next_due(now: float, interval: float) -> float:
    """The next multiple of `interval` on the wall clock after `now`.

    Jobs of one interval sample in the same instant, so they share one scan of /proc and one queue transaction,
    and their samples line up in charts; a late tick never shifts the ones after it.
    """
    return (math.floor(now / interval) + 1) * interval


@dataclass(frozen=True, slots=True)
class Context:
    """What every job needs: where items go, which computer they are about, and whether maintenance is on."""

    sink: ItemSink
    object_key: str
    in_maintenance: Callable[[datetime], bool]
    open_reader: ReaderFactory

    async def problem(self, source: str, message: str) -> None:
        log.warning("%s: %s", source, message)
        await self.sink([sink.event(datetime.now(UTC), object_key=self.object_key, channel=AGENT_CHANNEL,
                                    source=source, number=RULE_PROBLEM_EVENT, level=EventLevel.WARNING,
                                    description=message)])


async def _every(key: str, interval: float, tick: Callable[[], Awaitable[None]]) -> None:
    """Call `tick` on the interval's wall-clock grid; a failing tick is logged and the cadence goes on."""
    due = first_due(time.time())
    while True:
        await asyncio.sleep(max(0.0, due - time.time()))
        try:
            await tick()
        except Exception as error:  # a counter that fails once (a vanished disk) must not end the rule for good
            log.warning("%s: sampling failed, trying again next interval: %s", key, error)
        due = next_due(time.time(), interval)  # after a stall the missed ticks are skipped, not burst


class PerformanceJob:
    def __init__(self, rule: PackRule, context: Context) -> None:
        assert rule.rule.performance is not None
        self.rule = rule
        self.counter = rule.rule.performance
        self.context = context
        self._collectors: dict[str, OptimizedCollector] = {}
        self._reader: CounterReader | None = None

    async def run(self) -> None:
        try:
            self._reader = await self.context.open_reader(self.counter)
        except UnknownCounter as error:
            await self.context.problem(self.rule.rule.name, f"rule {self.rule.key} cannot run: {error}")
            return
        await _every(self.rule.key, self.counter.interval_seconds, self.sample)

    async def sample(self) -> None:
        assert self._reader is not None
        readings = await self._reader.read()
        now = datetime.now(UTC)
        items: list[pb.Item] = []
        for reading in readings:
            collector = self._collectors.setdefault(
                reading.instance, OptimizedCollector(self.counter.optimized_collection))
            items += [sink.performance(s.at, object_key=self.context.object_key, object_name=self.counter.object,
                                       counter=self.counter.counter, instance=reading.instance, value=s.value)
                      for s in collector.offer(Sample(now, reading.value))]
        if items:
            await self.context.sink(items)


class MonitorJob:
    def __init__(self, monitor: PackMonitor, context: Context, tasks: TaskRunner | None,
                 carried: Mapping[str, ReportedHealth] | None = None) -> None:
        self.monitor = monitor
        self.context = context
        self.tasks = tasks
        self.instances: dict[str, ThresholdMonitor] = {}
        self._carried = dict(carried or {})
        self._reader: CounterReader | None = None

    def source(self, instance: str) -> str:
        """The monitor's name on the wire; a monitor over every instance gets one per instance."""
        name = self.monitor.monitor.name
        return name if self.monitor.monitor.performance.instance is not None else f"{name}({instance})"

    async def run(self) -> None:
        counter = self.monitor.monitor.performance
        try:
            self._reader = await self.context.open_reader(counter)
        except UnknownCounter as error:
            await self.context.problem(self.monitor.monitor.name, f"monitor {self.monitor.key} cannot run: {error}")
            return
        await _every(self.monitor.key, counter.interval_seconds, self.sample)

    async def sample(self) -> None:
        assert self._reader is not None
        readings = await self._reader.read()
        now = datetime.now(UTC)
        maintenance = self.context.in_maintenance(now)
        items: list[pb.Item] = []
        for reading in readings:
            monitor = self.instances.get(reading.instance)
            if monitor is None:
                monitor = self.instances[reading.instance] = ThresholdMonitor(
                    self.monitor.monitor, object_key=self.context.object_key, source=self.source(reading.instance),
                    reported=self._carried.pop(reading.instance, ReportedHealth()))
            outcome = monitor.evaluate(now, reading.value, in_maintenance=maintenance)
            items += outcome.items
            if outcome.transition is not None and self.tasks is not None:
                self.tasks.on_transition(outcome.transition, self.monitor.monitor.name)
        if items:
            await self.context.sink(items)

    def reported(self) -> dict[str, ReportedHealth]:
        return {**self._carried, **{instance: m.reported for instance, m in self.instances.items()}}

    async def retire(self) -> None:
        now = datetime.now(UTC)
        items = [item for m in self.instances.values() for item in m.retire(now)]
        if items:
            await self.context.sink(items)


@dataclass(frozen=True, slots=True)
class _Matcher:
    rule: PackRule
    pattern: re.Pattern[str]


class LogFileJob:
    """One tail per file; the rules reading it can change under it."""

    def __init__(self, path: str, rules: Sequence[PackRule], context: Context, state_dir: Path,
                 poll_seconds: float) -> None:
        self.path = path
        self.context = context
        self.tail = LogFileTail(path, state_dir)
        self.poll_seconds = poll_seconds
        self.rules: tuple[PackRule, ...] = ()
        self._matchers: list[_Matcher] = []
        self._pending_problems: list[tuple[str, str]] = []
        self._failing: tuple[int | None, str | None] | None = None
        self.set_rules(rules)

    def set_rules(self, rules: Sequence[PackRule]) -> None:
        self.rules = tuple(rules)
        self._matchers = []
        for rule in rules:
            assert rule.rule.event is not None
            try:
                self._matchers.append(_Matcher(rule, re.compile(rule.rule.event.pattern)))
            except re.error as error:
                self._pending_problems.append((rule.rule.name, f"rule {rule.key} has an invalid pattern "
                                                               f"{rule.rule.event.pattern!r}: {error}"))

    async def run(self) -> None:
        while True:
            for source, message in self._pending_problems:
                await self.context.problem(source, message)
            self._pending_problems.clear()
            try:
                await self.tail.follow(self._handle)
                self._failing = None
            except OSError as error:
                # Said once per kind of failure (e.g. permission denied), not every poll; it is retried each poll.
                if self._failing != (error.errno, error.strerror):
                    self._failing = (error.errno, error.strerror)
                    await self.context.problem(self.rules[0].rule.name if self.rules else AGENT_CHANNEL,
                                               f"log file {self.path} cannot be read: {error.strerror}; the agent "
                                               "keeps trying. Give the agent's user read access to it")
            await asyncio.sleep(self.poll_seconds)

    async def _handle(self, lines: list[str], lost: list[str]) -> None:
        now = datetime.now(UTC)
        items: list[pb.Item] = [
            sink.event(now, object_key=self.context.object_key, channel=self.path, source=AGENT_CHANNEL,
                       number=RULE_PROBLEM_EVENT, level=EventLevel.WARNING, description=text) for text in lost]
        for line in lines:
            for matcher in self._matchers:
                if matcher.pattern.search(line) is None:
                    continue
                rule, event = matcher.rule.rule, matcher.rule.rule.event
                assert event is not None
                items.append(sink.event(now, object_key=self.context.object_key, channel=self.path,
                                        source=rule.name, number=event.event_id or 0, level=event.level,
                                        description=line))
                if rule.alert is not None:
                    items.append(sink.alert(now, object_key=self.context.object_key, source=rule.name,
                                            name=rule.alert.name or rule.display_name or rule.name, description=line,
                                            severity=rule.alert.severity, priority=rule.alert.priority))
        if items:
            await self.context.sink(items)


class RuleScheduler:
    """Keeps one asyncio task per performance rule, per monitor and per log file, in line with the plan."""

    def __init__(self, context: Context, state_dir: Path, *, tasks: TaskRunner | None = None,
                 log_poll_seconds: float = 5.0) -> None:
        self.context = context
        self.state_dir = state_dir
        self.tasks = tasks
        self.log_poll_seconds = log_poll_seconds
        self.plan = CollectionPlan()
        self._performance: dict[str, tuple[PerformanceJob, asyncio.Task[None]]] = {}
        self._monitors: dict[str, tuple[MonitorJob, asyncio.Task[None]]] = {}
        self._logs: dict[str, tuple[LogFileJob, asyncio.Task[None]]] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def apply(self, plan: CollectionPlan) -> None:
        """Bring the running jobs in line with `plan`; call from the event loop."""
        old_rules = {k: r for k, r in self.plan.rules.items() if r.rule.performance is not None}
        new_rules = {k: r for k, r in plan.rules.items() if r.rule.performance is not None}
        rules = diff_keyed(old_rules, new_rules)
        for key in [*rules.removed, *rules.changed]:
            self._performance.pop(key)[1].cancel()
        for key, rule in [*rules.added.items(), *((k, new) for k, (_, new) in rules.changed.items())]:
            collecting = PerformanceJob(rule, self.context)
            self._performance[key] = (collecting, self._spawn(collecting.run, key))

        monitors = diff_keyed(dict(self.plan.monitors), dict(plan.monitors))
        for key in monitors.removed:
            removed, task = self._monitors.pop(key)
            task.cancel()
            self._later(removed.retire)
        for key, (_, new) in monitors.changed.items():
            previous, task = self._monitors.pop(key)
            task.cancel()
            replacement = MonitorJob(new, self.context, self.tasks, carried=previous.reported())
            self._monitors[key] = (replacement, self._spawn(replacement.run, key))
        for key, monitor in monitors.added.items():
            added = MonitorJob(monitor, self.context, self.tasks)
            self._monitors[key] = (added, self._spawn(added.run, key))

        self._apply_logs(plan)
        if self.tasks is not None:
            self.tasks.update_tasks(plan.tasks)
        # Only problems not reported for the previous plan: a reconnect re-sending the same packs stays quiet.
        for problem in plan.problems:
            if problem not in self.plan.problems:
                self._later(functools.partial(self.context.problem, "management-packs", problem))
        self.plan = plan

    def _apply_logs(self, plan: CollectionPlan) -> None:
        by_file: dict[str, list[PackRule]] = {}
        for rule in plan.rules.values():
            if rule.rule.event is not None:
                by_file.setdefault(rule.rule.event.log_file, []).append(rule)
        for path in [p for p in self._logs if p not in by_file]:
            self._logs.pop(path)[1].cancel()
        for path, rules in by_file.items():
            if path in self._logs:
                job = self._logs[path][0]
                if job.rules != tuple(rules):
                    job.set_rules(rules)  # the tail keeps its place: a pack update loses and repeats nothing
            else:
                job = LogFileJob(path, rules, self.context, self.state_dir, self.log_poll_seconds)
                self._logs[path] = (job, self._spawn(job.run, path))

    def performance_job(self, key: str) -> PerformanceJob | None:
        entry = self._performance.get(key)
        return entry[0] if entry else None

    def monitor_job(self, key: str) -> MonitorJob | None:
        entry = self._monitors.get(key)
        return entry[0] if entry else None

    def log_job(self, path: str) -> LogFileJob | None:
        entry = self._logs.get(path)
        return entry[0] if entry else None

    @property
    def running(self) -> dict[str, int]:
        return {"performance": len(self._performance), "monitors": len(self._monitors), "log_files": len(self._logs)}

    def _spawn(self, work: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:  # one broken job must not take the others down
                log.exception("collection job %s stopped", name)
        return asyncio.create_task(guarded(), name=f"collect:{name}")

    def _later(self, work: Callable[[], Awaitable[None]]) -> None:
        task = self._spawn(work, "retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        tasks = [t for _, t in [*self._performance.values(), *self._monitors.values(), *self._logs.values()]]
        for task in tasks:
            task.cancel()
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=5)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._performance.clear()
        self._monitors.clear()
        self._logs.clear()
