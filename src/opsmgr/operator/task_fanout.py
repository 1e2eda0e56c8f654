"""AgentTask decisions: whether a run can start, when it timed out, which children a selector run needs, and how
the children sum up into the parent's phase.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from opsmgr.api.agent_task import AgentTaskSpec, ChildTaskCounts, TaskPhase
from opsmgr.api.management_pack import Task

# The agent enforces the timeout itself; the operator only steps in for runs nobody reported on (agent offline).
REPORT_GRACE = timedelta(seconds=30)


def task_problems(spec: AgentTaskSpec, task: Task | None, pack_found: bool) -> list[str]:
    """Why this run cannot be done, as sentences naming the field; empty when it can."""
    reference = spec.task
    if not pack_found:
        return [f"spec.task.managementPack: ManagementPack {reference.management_pack!r} does not exist in this "
                "namespace; create it or correct the name"]
    if task is None:
        return [f"spec.task.name: ManagementPack {reference.management_pack!r} has no task {reference.name!r}"]
    declared = {p.name: p for p in task.parameters}
    supplied = spec.parameter_values()
    problems = [f"spec.parameters: {name!r} is not a parameter of task {task.name!r}; use one of "
                f"{', '.join(sorted(declared)) or '(none)'}" for name in supplied if name not in declared]
    problems += [f"spec.parameters: task {task.name!r} requires {p.name!r}; add it"
                 for p in task.parameters if p.required and p.default is None and p.name not in supplied]
    return problems


def timeout_of(spec: AgentTaskSpec, task: Task | None) -> timedelta:
    seconds = spec.timeout_seconds or (task.timeout_seconds if task is not None else 60)
    return timedelta(seconds=seconds)


def timed_out(phase: TaskPhase, started: datetime | None, created: datetime, timeout: timedelta,
              now: datetime) -> bool:
    """Whether an unfinished run passed its deadline (from its start, or its creation when it never started)."""
    if phase.finished:
        return False
    return now > (started or created) + timeout + REPORT_GRACE


def child_spec(parent: AgentTaskSpec, agent: str) -> dict[str, object]:
    """The spec of the child that runs the parent's task on one agent."""
    spec = parent.model_copy(update={"agent": agent, "agent_selector": None})
    return spec.to_dict()


def selected_agents(selector_matches: Iterable[tuple[str, Mapping[str, str]]], parent: AgentTaskSpec) -> list[str]:
    """Names of the agents (name, labels) the parent's selector picks, sorted."""
    assert parent.agent_selector is not None
    return sorted(name for name, agent_labels in selector_matches if parent.agent_selector.matches(agent_labels))


def sum_children(phases: Iterable[TaskPhase]) -> ChildTaskCounts:
    counted = Counter(phases)
    return ChildTaskCounts(total=sum(counted.values()), pending=counted[TaskPhase.PENDING],
                           running=counted[TaskPhase.RUNNING], succeeded=counted[TaskPhase.SUCCEEDED],
                           failed=counted[TaskPhase.FAILED] + counted[TaskPhase.TIMED_OUT])


def parent_phase(counts: ChildTaskCounts) -> TaskPhase:
    """Pending until a child starts, Running until all finish, then Succeeded only if every child succeeded."""
    if counts.total == 0:
        return TaskPhase.FAILED
    if counts.pending + counts.running == 0:
        return TaskPhase.SUCCEEDED if counts.failed == 0 else TaskPhase.FAILED
    if counts.pending == counts.total:
        return TaskPhase.PENDING
    return TaskPhase.RUNNING
