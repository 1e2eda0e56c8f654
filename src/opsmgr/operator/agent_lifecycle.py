"""When in-cluster Agents come and go: pure decisions over what the pod and node watches saw.

An Agent is created when its pod or node appears, marked retiring the moment its going is planned (a pod being
deleted or finished, a node leaving), so the silence that follows raises no Heartbeat Failure, and deleted once
its pod or node is gone. An Agent whose pod vanished without any of that is retired after a quiet period.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class PodStep(StrEnum):
    ENSURE = "Ensure"  # the pod lives: its Agent must exist
    RETIRING = "Retiring"  # the pod is going on purpose: mark the Agent, keep it while the agent flushes
    RETIRE = "Retire"  # the pod is gone: delete the Agent


FINISHED_PHASES = ("Succeeded", "Failed")


def pod_step(event_type: str | None, pod: Mapping[str, Any]) -> PodStep:
    """What an event about an injected pod asks for."""
    if event_type == "DELETED":
        return PodStep.RETIRE
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return PodStep.RETIRING
    if (pod.get("status") or {}).get("phase") in FINISHED_PHASES:
        return PodStep.RETIRING
    return PodStep.ENSURE


def vanished(now: datetime, *, pod_exists: bool, created: datetime, last_heartbeat: datetime | None,
             retire_after: timedelta) -> bool:
    """Whether a sidecar Agent whose pod is gone has been quiet long enough to be retired."""
    if pod_exists:
        return False
    last_sign = max(created, last_heartbeat) if last_heartbeat is not None else created
    return now - last_sign >= retire_after


def node_selected(node_labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(node_labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class NodePlan:
    create: tuple[str, ...]  # nodes that need an Agent
    retire: tuple[str, ...]  # nodes whose Agent must go


def node_plan(nodes: Mapping[str, Mapping[str, str]], selector: Mapping[str, str], have: Iterable[str], *,
              enabled: bool) -> NodePlan:
    """Agents to create and retire so that each selected node has exactly one."""
    wanted = {name for name, node_labels in nodes.items() if enabled and node_selected(node_labels, selector)}
    existing = set(have)
    return NodePlan(tuple(sorted(wanted - existing)), tuple(sorted(existing - wanted)))
