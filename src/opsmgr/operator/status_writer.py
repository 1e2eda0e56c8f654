"""Writing status only when a decision changed, as a guarded merge patch of the fields the operator owns, and a
Kubernetes Event for what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Announcement:
    type: str
    reason: str
    message: str


def announcements(changed: Sequence[Condition]) -> list[Announcement]:
    """The Events for one pass's changed conditions: one Warning per condition that became False or Unknown, and a
    single Normal for all that became True. A new Agent turns four conditions True at once; four Events each for
    10,000 Agents flooded the API server (429s) and queued in the operator, one says the same.
    """
    became_true = [c for c in changed if c.status is ConditionStatus.TRUE]
    found = [Announcement("Warning", c.reason, f"{c.type} is {c.status.value}: {c.message}"[:1024])
             for c in changed if c.status is not ConditionStatus.TRUE]
    if became_true:
        # Ready speaks for the object; otherwise the first condition that changed names the Event.
        lead = next((c for c in became_true if c.type == "Ready"), became_true[0])
        ordered = [lead, *(c for c in became_true if c is not lead)]
        message = "; ".join(f"{c.type} is True: {c.message}" for c in ordered)
        found.insert(0, Announcement("Normal", lead.reason, message[:1024]))
    return found


def announce(body: Mapping[str, Any], changed: Sequence[Condition]) -> None:
    for announcement in announcements(changed):
        kopf.event(cast(Any, body), type=announcement.type, reason=announcement.reason, message=announcement.message)
