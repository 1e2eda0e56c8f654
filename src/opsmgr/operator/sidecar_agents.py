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
    PLACEMENT_LABEL,
    POD_LABEL,
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


@kopf.timer(GROUP, VERSION, "agents", interval=SWEEP_SECONDS, initial_delay=SWEEP_SECONDS,
            labels={PLACEMENT_LABEL: "Sidecar"})
async def sidecar_agent_sweep(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Retire a sidecar Agent whose pod vanished without a trace (no event reached us) once it was quiet enough."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    pod_name = (meta.get("labels") or {}).get(POD_LABEL, name)
    owner_uid = next((o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("kind") == "Pod"), None)
    reference = (body.get("spec") or {}).get("managementGroupRef") or {}
    found = entries(kwargs["groups_by_name"], (reference.get("namespace") or namespace, reference.get("name", "")))
    spec = SidecarAgentsSpec.model_validate((found[0].get("spec") or {}).get("sidecarAgents") or {}) if found \
        else SidecarAgentsSpec()
    context = context_of(memo)
    pod = await context.kube.get("v1", "Pod", namespace, pod_name)
    exists = pod is not None and (owner_uid is None or pod["metadata"].get("uid") == owner_uid)
    status = body.get("status") or {}
    heartbeat = status.get("lastHeartbeatTime")
    if vanished(datetime.now(UTC), pod_exists=exists, created=datetime.fromisoformat(meta["creationTimestamp"]),
                last_heartbeat=datetime.fromisoformat(heartbeat) if heartbeat else None,
                retire_after=parse_duration(spec.retire_after)):
        await retire(context, namespace, name, "PodVanished")
        logger.info(f"Agent {namespace}/{name} retired: its pod {pod_name} is gone and it has been silent for "
                    f"{spec.retire_after}")
