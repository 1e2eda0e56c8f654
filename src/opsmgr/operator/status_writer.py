"""Writing status only when a decision changed, as a guarded merge patch of the fields the operator owns, and a
Kubernetes Event for every condition that changed status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import kopf

from opsmgr.api.conditions import Condition, ConditionStatus, set_condition
from opsmgr.operator.kube import Kube, Ref
from opsmgr.operator.readiness import Verdict


def fold(conditions: Sequence[Condition], verdicts: Mapping[str, Verdict], generation: int | None,
         now: datetime) -> list[Condition]:
    """`conditions` with each verdict set; transition times move only where a status changed."""
    folded = list(conditions)
    for type, verdict in verdicts.items():
        folded = set_condition(folded, verdict.condition(type, generation, now))
    return folded


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any], owned: Iterable[str]) -> dict[str, Any]:
    """The owned status fields whose value differs from what is stored (`old`, as read); empty when none does.

    Compared with the stored status, not a parsed copy, so defaults the API has not seen yet (phase Pending,
    approval Pending) are written once and the printer columns show them.
    """
    return {key: new.get(key) for key in owned if old.get(key) != new.get(key)}


def transitions(old: Sequence[Condition], new: Sequence[Condition]) -> list[Condition]:
    """Conditions that are new or whose status changed: each becomes an Event."""
    before = {c.type: c for c in old}
    return [c for c in new if c.type not in before or before[c.type].status != c.status]


async def write_status(kube: Kube, body: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Patch status when `patch` has anything; guarded by resourceVersion so a stale read never overwrites a list
    (conditions) somebody else changed meanwhile: the API server answers 409 and the handler retries.
    """
    if not patch:
        return False
    meta = body["metadata"]
    ref = Ref(str(body["apiVersion"]), str(body["kind"]), meta.get("namespace"), meta["name"])
    await kube.merge_patch(ref, {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": dict(patch)},
                           subresource="status")
    return True


def announce(body: Mapping[str, Any], changed: Iterable[Condition]) -> None:
    """One Event per changed condition: Normal when it became True, Warning when False."""
    for condition in changed:
        kind = "Normal" if condition.status is ConditionStatus.TRUE else "Warning"
        message = f"{condition.type} is {condition.status.value}: {condition.message}"[:1024]
        kopf.event(cast(Any, body), type=kind, reason=condition.reason, message=message)
