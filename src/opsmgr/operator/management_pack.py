"""ManagementPack handlers: validate what the schema cannot, count rules, monitors, tasks and targeted agents.

The servers watch ManagementPacks themselves and deliver them to agents; the operator's Ready says whether the
pack can be delivered as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from opsmgr.api import ManagementPack
from opsmgr.api.common import GROUP, VERSION
from opsmgr.api.conditions import ConditionStatus, set_condition, summarize_ready
from opsmgr.api.pack_validation import pack_problems
from opsmgr.operator.context import context_of
from opsmgr.operator.indexes import AgentEntry, entries
from opsmgr.operator.kube import Kube, KubeError
from opsmgr.operator.readiness import Verdict
from opsmgr.operator.status_writer import announce, fold, status_patch, transitions, write_status

OWNED_STATUS = ("observedGeneration", "conditions", "rules", "monitors", "tasks", "agents")
VALID = "Valid"
GROUP_FOUND = "ManagementGroupFound"


def pack_verdict(problems: list[str]) -> Verdict:
    if problems:
        return Verdict(ConditionStatus.FALSE, "InvalidReference", "; ".join(problems)[:4000])
    return Verdict(ConditionStatus.TRUE, "Valid", "every override and task argument refers to something in the pack")


def targeted(pack: ManagementPack, agents: list[AgentEntry]) -> int:
    return sum(1 for agent in agents if not agent.deleting and pack.spec.agent_selector.matches(dict(agent.labels)))


async def reconcile(kube: Kube, body: Mapping[str, Any], groups_index: Any, agents_index: Any) -> None:
    pack = ManagementPack.from_body(body)
    reference = pack.spec.management_group_ref
    key = (reference.namespace_or(pack.metadata.namespace or ""), reference.name)
    group_found = bool(entries(groups_index, key))
    now = datetime.now(UTC)
    verdicts = {
        VALID: pack_verdict(pack_problems(pack.spec)),
        GROUP_FOUND: (Verdict(ConditionStatus.TRUE, "Found", f"delivered to the agents of {reference.name}")
                      if group_found else
                      Verdict(ConditionStatus.FALSE, "ManagementGroupNotFound",
                              f"spec.managementGroupRef names {reference.name}, which does not exist")),
    }
    old = pack.status
    generation = pack.metadata.generation
    conditions = fold(old.conditions, verdicts, generation, now)
    conditions = set_condition(conditions, summarize_ready(conditions, (VALID, GROUP_FOUND), generation=generation,
                                                           now=now))
    new = old.model_copy(update={
        "observed_generation": generation, "conditions": conditions, "rules": len(pack.spec.rules),
        "monitors": len(pack.spec.monitors), "tasks": len(pack.spec.tasks),
        "agents": targeted(pack, entries(agents_index, key)),
    })
    if await write_status(kube, body, status_patch(body.get("status") or {}, new.to_dict(), OWNED_STATUS)):
        announce(body, transitions(old.conditions, new.conditions))


@kopf.on.resume(GROUP, VERSION, "managementpacks")
@kopf.on.create(GROUP, VERSION, "managementpacks")
@kopf.on.update(GROUP, VERSION, "managementpacks", field="spec")
@kopf.timer(GROUP, VERSION, "managementpacks", interval=60.0, initial_delay=30.0)
async def pack_changed(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Validate and count; the timer keeps the targeted-agent count current as agents come and go."""
    try:
        await reconcile(context_of(memo).kube, body, kwargs["groups_by_name"], kwargs["agents_by_group"])
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=1 if error.conflict else 10) from None
