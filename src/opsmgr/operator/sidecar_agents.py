"""Sidecar Agents follow their pods: created when an injected pod appears, marked retiring when its deletion is
planned, deleted when it is gone, and swept when the pod vanished without a trace.

Pods are watched with `kopf.on.event` only: kopf writes nothing onto application pods (no finalizer, no progress
annotations), so an operator outage never holds up a pod's deletion. The Agent is owned by its pod, so the garbage
collector removes it with the pod even while the operator is down; the Agent's own delete handler revokes its
certificate either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import yaml

from opsmgr.api.common import GROUP, VERSION, parse_duration
from opsmgr.api.management_group import IN_CLUSTER_QUEUE_LIMIT_MB, SidecarAgentsSpec
from opsmgr.operator.agent_lifecycle import PodStep, pod_step, vanished
from opsmgr.operator.context import OperatorContext, context_of
from opsmgr.operator.indexes import entries
from opsmgr.operator.kube import KubeError, Ref
from opsmgr.operator.render_agents import (
    AGENT_ANNOTATION,
    AGENT_GROUP_ANNOTATION,
    CONFIG_ANNOTATION,
    MB,
    RETIRING_ANNOTATION,
    render_sidecar_agent,
)

AGENT_API = f"{GROUP}/{VERSION}"
SWEEP_SECONDS = 30.0


def _seen(memo: Any) -> set[tuple[str, str, str]]:
    seen = getattr(memo, "sidecar_agents_seen", None)
    if seen is None:
        seen = set()
        memo.sidecar_agents_seen = seen
    assert isinstance(seen, set)
    return seen


async def mark_retiring(context: OperatorContext, namespace: str, agent: str, reason: str) -> bool:
    """Say on the Agent that its coming silence is planned; False when the Agent is already gone."""
    patch = {"metadata": {"annotations": {RETIRING_ANNOTATION: f"{reason} {datetime.now(UTC).isoformat()}"}}}
    try:
        await context.kube.merge_patch(Ref(AGENT_API, "Agent", namespace, agent), patch)
    except KubeError as error:
        if error.status == 404:
            return False
        raise
    return True


async def retire(context: OperatorContext, namespace: str, agent: str, reason: str) -> None:
    """Mark the Agent retiring, then delete it (its delete handler revokes the certificate)."""
    if await mark_retiring(context, namespace, agent, reason):
        await context.kube.delete(AGENT_API, "Agent", namespace, agent)


def _group_of(annotations: Mapping[str, str]) -> tuple[str, str] | None:
    namespace, _, name = annotations.get(AGENT_GROUP_ANNOTATION, "").partition("/")
    return (namespace, name) if namespace and name else None


def _queue_limit_mb(annotations: Mapping[str, str]) -> int:
    try:
        config = yaml.safe_load(annotations.get(CONFIG_ANNOTATION, "")) or {}
        return max(5, int(config["queue"]["limit_bytes"]) // MB)
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return IN_CLUSTER_QUEUE_LIMIT_MB


@kopf.on.event("", "v1", "pods", annotations={AGENT_ANNOTATION: kopf.PRESENT})
async def injected_pod(*, event: kopf.RawEvent, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    pod = event.get("object") or {}
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    namespace, uid, agent = meta.get("namespace", ""), meta.get("uid", ""), annotations.get(AGENT_ANNOTATION, "")
    group = _group_of(annotations)
    if not (namespace and uid and agent and group):
        return
    context = context_of(memo)
    seen = _seen(memo)
    step = pod_step(event.get("type"), pod)
    try:
        if step is PodStep.ENSURE:
            if (namespace, agent, uid) in seen:
                return
            created = await context.kube.create(render_sidecar_agent(pod, group, _queue_limit_mb(annotations)))
            seen.add((namespace, agent, uid))
            if created is not None:
                logger.info(f"Agent {namespace}/{agent} created for pod {meta.get('name')}")
        elif step is PodStep.RETIRING:
            if (namespace, agent, f"retiring:{uid}") not in seen:
                await mark_retiring(context, namespace, agent, "PodDeleting")
                seen.add((namespace, agent, f"retiring:{uid}"))
        else:
            await retire(context, namespace, agent, "PodDeleted")
            seen.discard((namespace, agent, uid))
            seen.discard((namespace, agent, f"retiring:{uid}"))
            logger.info(f"Agent {namespace}/{agent} retired with its pod")
    except KubeError as error:
        # An event handler is not retried; the sweep and the next event of this pod catch up.
        logger.warning(f"Agent {namespace}/{agent} ({step.value}): {error}")


@kopf.timer(GROUP, VERSION, "managementgroups", interval=SWEEP_SECONDS, initial_delay=SWEEP_SECONDS)
async def sidecar_agents_swept(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Retire the group's sidecar Agents whose pod vanished without a trace (no event reached us) once they were
    quiet long enough. One timer per group, not per Agent: kopf keeps a copy of every object that has a timer, and
    for 10,000 Agents those copies were a large part of the operator's memory.
    """
    meta = body.get("metadata") or {}
    spec = SidecarAgentsSpec.model_validate((body.get("spec") or {}).get("sidecarAgents") or {})
    retire_after = parse_duration(spec.retire_after)
    context = context_of(memo)
    now = datetime.now(UTC)
    for agent in entries(kwargs["sidecar_agents_by_group"], (meta.get("namespace", ""), meta.get("name", ""))):
        created = datetime.fromisoformat(agent.created)
        heartbeat = datetime.fromisoformat(agent.last_heartbeat) if agent.last_heartbeat else None
        # Only an Agent quiet for the whole period costs a read of its pod.
        if not vanished(now, pod_exists=False, created=created, last_heartbeat=heartbeat, retire_after=retire_after):
            continue
        try:
            pod = await context.kube.get("v1", "Pod", agent.namespace, agent.pod)
            if pod is None or (agent.pod_uid is not None and pod["metadata"].get("uid") != agent.pod_uid):
                await retire(context, agent.namespace, agent.name, "PodVanished")
                logger.info(f"Agent {agent.namespace}/{agent.name} retired: its pod {agent.pod} is gone and it has "
                            f"been silent for {spec.retire_after}")
        except KubeError as error:  # the next sweep tries again; one Agent must not stop the others
            logger.warning(f"sweeping Agent {agent.namespace}/{agent.name}: {error}")
