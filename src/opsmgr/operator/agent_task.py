"""AgentTask handlers: check that a run can happen, fan a selector run out into one child per agent and sum the
children up, and mark runs nobody reported on as TimedOut. The servers deliver runs to agents and report phases.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from opsmgr.api import AgentTask, ManagementPack
from opsmgr.api.agent_task import TaskPhase
from opsmgr.api.common import API_VERSION, GROUP, VERSION
from opsmgr.api.conditions import ConditionStatus, set_condition
from opsmgr.api.management_pack import Task
from opsmgr.operator import render
from opsmgr.operator.context import OperatorContext, context_of
from opsmgr.operator.indexes import entries
from opsmgr.operator.kube import KubeError
from opsmgr.operator.names import PARENT_TASK_LABEL, child_task
from opsmgr.operator.readiness import Verdict
from opsmgr.operator.status_writer import announce, fold, status_patch, transitions, write_status
from opsmgr.operator.task_fanout import (
    child_spec,
    parent_phase,
    selected_agents,
    sum_children,
    task_problems,
    timed_out,
    timeout_of,
)

OWNED_STATUS = ("observedGeneration", "conditions", "phase", "children", "completionTime", "output")
ACCEPTED = "Accepted"
READY = "Ready"
POLL_SECONDS = 5.0


async def _task(context: OperatorContext, task: AgentTask) -> tuple[bool, Task | None]:
    pack_body = await context.kube.get(API_VERSION, "ManagementPack", task.metadata.namespace or "",
                                       task.spec.task.management_pack)
    if pack_body is None:
        return False, None
    return True, ManagementPack.from_body(pack_body).spec.task(task.spec.task.name)


def _children(task: AgentTask, agents: list[str]) -> list[dict[str, Any]]:
    parent = task.metadata.name or ""
    owner = render.owner_reference(task)
    return [{
        "apiVersion": API_VERSION, "kind": "AgentTask",
        "metadata": {"name": child_task(parent, agent), "namespace": task.metadata.namespace,
                     "labels": {PARENT_TASK_LABEL: parent}, "ownerReferences": [owner]},
        "spec": child_spec(task.spec, agent),
    } for agent in agents]


async def reconcile(context: OperatorContext, body: Mapping[str, Any], agents_index: Any) -> None:
    task = AgentTask.from_body(body)
    namespace = task.metadata.namespace or ""
    now = datetime.now(UTC)
    old = task.status
    pack_found, definition = await _task(context, task)
    problems = task_problems(task.spec, definition, pack_found)
    update: dict[str, Any] = {}
    verdicts: dict[str, Verdict] = {}
    if problems:
        verdicts[ACCEPTED] = Verdict(ConditionStatus.FALSE, "InvalidTask", "; ".join(problems))
        if not old.phase.finished:
            update |= {"phase": TaskPhase.FAILED, "completion_time": now}
    elif task.spec.agent_selector is not None:
        agents = selected_agents(entries(agents_index, namespace), task.spec)
        children = _children(task, agents)
        for child in children:
            await context.kube.create(child)  # a child exists once; its spec is immutable
        listed = await context.kube.list(API_VERSION, "AgentTask", namespace, {PARENT_TASK_LABEL: task.metadata.name
                                                                               or ""})
        counts = sum_children(TaskPhase(c.get("status", {}).get("phase", "Pending")) for c in listed)
        counts = counts.model_copy(update={"total": max(counts.total, len(children)),
                                           "pending": counts.pending + max(0, len(children) - counts.total)})
        phase = parent_phase(counts)
        verdicts[ACCEPTED] = Verdict(ConditionStatus.TRUE, "FannedOut", f"one run on each of {len(agents)} agent(s)")
        update |= {"children": counts, "phase": phase}
        if phase.finished and old.completion_time is None:
            update["completion_time"] = now
    else:
        verdicts[ACCEPTED] = await _agent_verdict(context, namespace, task.spec.agent or "", agents_index)
        created = task.metadata.creation_timestamp or now
        if timed_out(old.phase, old.start_time, created, timeout_of(task.spec, definition), now):
            update |= {"phase": TaskPhase.TIMED_OUT, "completion_time": now,
                       "output": old.output or "no result reported by the agent before the timeout"}
    phase = update.get("phase", old.phase)
    generation = task.metadata.generation
    conditions = fold(old.conditions, verdicts, generation, now)
    ready = (Verdict(ConditionStatus.TRUE, phase.value, f"the run {phase.value.lower()}") if phase.finished else
             Verdict(ConditionStatus.FALSE, phase.value, f"the run is {phase.value.lower()}"))
    conditions = set_condition(conditions, ready.condition(READY, generation, now))
    new = old.model_copy(update={**update, "observed_generation": generation, "conditions": conditions})
    if await write_status(context.kube, body, status_patch(body.get("status") or {}, new.to_dict(), OWNED_STATUS)):
        announce(body, transitions(old.conditions, new.conditions))


async def _agent_verdict(context: OperatorContext, namespace: str, agent: str, agents_index: Any) -> Verdict:
    """Accepted while the agent exists; a run for a missing (or deleted) agent says so until it times out."""
    # The index may trail a just-created Agent: only a read settles that it is missing.
    known = any(name == agent for name, _ in entries(agents_index, namespace))
    if known or await context.kube.get(API_VERSION, "Agent", namespace, agent) is not None:
        return Verdict(ConditionStatus.TRUE, "Accepted", f"waiting for agent {agent}")
    return Verdict(ConditionStatus.FALSE, "AgentNotFound", f"spec.agent names {agent}, which does not exist in this "
                   "namespace; the run times out unless the Agent is created")


def _unfinished(*, status: kopf.Status, **_: Any) -> bool:
    return status.get("phase", "Pending") not in ("Succeeded", "Failed", "TimedOut")


@kopf.on.resume(GROUP, VERSION, "agenttasks")
@kopf.on.create(GROUP, VERSION, "agenttasks")
@kopf.timer(GROUP, VERSION, "agenttasks", interval=POLL_SECONDS, initial_delay=POLL_SECONDS, when=_unfinished)
async def task_progress(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Accept or refuse the run, fan out a selector run, sum children up, time out silent runs."""
    try:
        await reconcile(context_of(memo), body, kwargs["agents_by_namespace"])
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=1 if error.conflict else 10) from None
