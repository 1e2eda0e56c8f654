"""The servers' watches of their group's resources: Agents (approval, assignment, maintenance, heartbeat settings,
probe), with an `AgentDirectory` backed by them.

Each kind is one list-then-watch cache (`opsmgr.kubeio.informer.Informer`) in the group's namespace; listeners
run on the event loop after the cache changed. The directory answers from the Agents for agents and from the
operator's directory file for gateways (Gateway resources are not watched here yet).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes_asyncio import client as kube_client
from pydantic import ValidationError

from opsmgr.api.agent import Agent, Placement
from opsmgr.api.agent import Approval as AgentApproval
from opsmgr.kubeio.informer import Informer
from opsmgr.kubeio.kube import Kube
from opsmgr.server.directory import AgentDirectory, AgentRecord, Approval, GatewayRecord

log = logging.getLogger(__name__)

POD_ANNOTATION = "opsmgr.io/pod"  # "name" or "namespace/name" of the Pod a Node or Sidecar agent runs in

AgentListener = Callable[[Agent | None, Agent | None], None]


def pod_of(agent: Agent) -> tuple[str, str] | None:
    """The (namespace, name) of the Pod whose phase answers for a Node or Sidecar agent, when it is known."""
    if agent.spec.placement is Placement.HOST:
        return None
    namespace = agent.metadata.namespace or ""
    named = agent.metadata.annotations.get(POD_ANNOTATION)
    if named:
        pod_namespace, _, pod_name = named.rpartition("/")
        return (pod_namespace or namespace, pod_name)
    owners: list[dict[str, Any]] = getattr(agent.metadata, "ownerReferences", None) or []
    for owner in owners:
        if owner.get("kind") == "Pod" and owner.get("name"):
            return (namespace, str(owner["name"]))
    return None


def custom_lister(kube: Kube, namespace: str, plural: str) -> Callable[..., Any]:
    """List (or, with watch=True, watch) one opsmgr kind in one namespace, as `Informer` calls it."""
    return partial(kube_client.CustomObjectsApi(kube.api).list_namespaced_custom_object, "opsmgr.io", "v1alpha1",
                   namespace, plural)


def fqdn_of(agent: Agent) -> str:
    return agent.spec.fqdn.lower().removesuffix(".")


class AgentCatalog:
    """The group's Agents by resource name and by FQDN (the stream's identity), kept by a watch."""

    def __init__(self, kube: Kube, *, namespace: str, group: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.group = group
        self.by_name: dict[str, Agent] = {}
        self.by_fqdn: dict[str, Agent] = {}
        self.bodies: dict[str, dict[str, Any]] = {}  # as the API server sent them: the status writer's base
        self._listeners: list[AgentListener] = []
        self.informer = Informer("agents", custom_lister(kube, namespace, "agents"), self._event)

    @property
    def synced(self) -> bool:
        return self.informer.synced.is_set()

    def on_change(self, listener: AgentListener) -> None:
        self._listeners.append(listener)

    def get(self, fqdn: str) -> Agent | None:
        return self.by_fqdn.get(fqdn.lower().removesuffix("."))

    def _event(self, kind: str, body: dict[str, Any]) -> None:
        name = str(body.get("metadata", {}).get("name", ""))
        before = self.by_name.get(name)
        after: Agent | None = None
        if kind != "DELETED":
            try:
                parsed = Agent.from_body(body)
            except ValidationError as exc:
                log.warning("agent not understood, ignored", extra={"fields": {"agent": name, "error": str(exc)}})
                parsed = None
            reference = parsed.spec.management_group_ref if parsed else None
            if parsed is not None and reference is not None and reference.name == self.group and \
                    reference.namespace_or(self.namespace) == self.namespace:
                after = parsed
        if before is not None:
            self.by_name.pop(name, None)
            if self.by_fqdn.get(fqdn_of(before)) is before:
                del self.by_fqdn[fqdn_of(before)]
        self.bodies.pop(name, None)
        if after is not None:
            self.bodies[name] = body
            self.by_name[name] = after
            self.by_fqdn[fqdn_of(after)] = after
        if before is None and after is None:
            return
        for listener in self._listeners:
            try:
                listener(before, after)
            except Exception:
                log.exception("agent listener failed", extra={"fields": {"agent": name}})


_APPROVALS = {AgentApproval.PENDING: Approval.PENDING, AgentApproval.APPROVED: Approval.APPROVED,
              AgentApproval.REJECTED: Approval.REJECTED}


@dataclass
class KubeAgentDirectory:
    """`AgentDirectory` over the Agent watch; gateways (and agents before the first listing) from `fallback`."""

    catalog: AgentCatalog | None
    fallback: AgentDirectory | None = None

    def lookup(self, fqdn: str) -> AgentRecord | None:
        if self.catalog is None or not self.catalog.synced:
            return self.fallback.lookup(fqdn) if self.fallback else None
        agent = self.catalog.get(fqdn)
        if agent is None:
            return None
        relayed = self.fallback.lookup(fqdn) if self.fallback else None
        return AgentRecord(fqdn_of(agent), _APPROVALS[agent.status.approval], relayed.gateway if relayed else None)

    def gateway(self, fqdn: str) -> GatewayRecord | None:
        return self.fallback.gateway(fqdn) if self.fallback else None

    @property
    def loading(self) -> bool:
        return self.catalog is None or not self.catalog.synced
