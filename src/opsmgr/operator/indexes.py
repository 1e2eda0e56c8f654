"""In-memory indexes kopf keeps from its watches, so handlers never list thousands of Agents from the API server.

Each entry is a small frozen snapshot of what the decisions need; kopf updates it on every watch event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from opsmgr.api.common import GROUP, VERSION
from opsmgr.operator.names import POLICY_ANNOTATION
from opsmgr.operator.render_agents import PLACEMENT_LABEL, POD_LABEL


@dataclass(frozen=True)
class AgentEntry:
    namespace: str
    name: str
    fqdn: str
    approval: str
    judged: bool  # the Agent handler has written an approval; a new Agent shows Pending before that
    asked_policy: str | None  # the policy it was last asked to be judged by (POLICY_ANNOTATION)
    health: str
    placement: str
    labels: tuple[tuple[str, str], ...]
    pinned_primary: str | None
    pinned_failover: tuple[str, ...]
    primary: str | None
    failover: tuple[str, ...]
    certificate_not_after: str | None
    deleting: bool


@dataclass(frozen=True)
class SidecarEntry:
    """What the sweep needs of a sidecar Agent to tell whether its pod vanished long enough ago."""
    namespace: str
    name: str
    pod: str
    pod_uid: str | None
    created: str
    last_heartbeat: str | None


@dataclass(frozen=True)
class GatewayEntry:
    name: str
    fqdn: str


def _group_key(namespace: str, spec: Mapping[str, Any]) -> tuple[str, str]:
    reference = spec.get("managementGroupRef") or {}
    return reference.get("namespace") or namespace, str(reference.get("name", ""))


@kopf.index(GROUP, VERSION, "managementgroups")
def groups_by_name(*, namespace: str | None, name: str, body: kopf.Body,
                   **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Each group's manifest, by (namespace, name)."""
    return {(namespace or "", name): {"apiVersion": body["apiVersion"], "kind": body["kind"],
                                "metadata": dict(body["metadata"]), "spec": dict(body.get("spec") or {})}}


@kopf.index(GROUP, VERSION, "agents")
def agents_by_group(*, namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, labels: kopf.Labels,
                    meta: kopf.Meta, **_: Any) -> dict[tuple[str, str], AgentEntry]:
    """Every Agent, by its group's (namespace, name)."""
    certificate = status.get("certificate") or {}
    return {_group_key(namespace or "", spec): AgentEntry(
        namespace=namespace or "", name=name, fqdn=str(spec.get("fqdn", "")).lower(),
        approval=str(status.get("approval", "Pending")), judged="approval" in status,
        asked_policy=(meta.get("annotations") or {}).get(POLICY_ANNOTATION),
        health=str(status.get("health", "Unknown")), placement=str(spec.get("placement", "")),
        labels=tuple(sorted(labels.items())), pinned_primary=spec.get("primaryServer"),
        pinned_failover=tuple(spec.get("failoverServers") or ()), primary=status.get("primaryServer"),
        failover=tuple(status.get("failoverServers") or ()), certificate_not_after=certificate.get("notAfter"),
        deleting=meta.get("deletionTimestamp") is not None)}


@kopf.index(GROUP, VERSION, "agents")
def agents_by_namespace(*, namespace: str | None, name: str, labels: kopf.Labels,
                        **_: Any) -> dict[str, tuple[str, dict[str, str]]]:
    """Every Agent's name and labels, by namespace: what an AgentTask selector picks from."""
    return {namespace or "": (name, dict(labels))}


@kopf.index(GROUP, VERSION, "agents", labels={PLACEMENT_LABEL: "Sidecar"})
def sidecar_agents_by_group(*, namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status,
                            labels: kopf.Labels, meta: kopf.Meta,
                            **_: Any) -> dict[tuple[str, str], SidecarEntry] | None:
    """Sidecar Agents by their group's (namespace, name), for the group's sweep; being deleted, none."""
    if meta.get("deletionTimestamp") is not None:
        return None
    owner = next((o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("kind") == "Pod"), None)
    return {_group_key(namespace or "", spec): SidecarEntry(
        namespace=namespace or "", name=name, pod=labels.get(POD_LABEL, name), pod_uid=owner,
        created=str(meta.get("creationTimestamp", "")), last_heartbeat=status.get("lastHeartbeatTime"))}


@kopf.index(GROUP, VERSION, "gateways")
def gateways_by_group(*, namespace: str | None, name: str, spec: kopf.Spec,
                      **_: Any) -> dict[tuple[str, str], GatewayEntry]:
    return {_group_key(namespace or "", spec): GatewayEntry(name, str(spec.get("fqdn", "")).lower())}


def entries(index: Any, key: object) -> list[Any]:
    """The values of one key of a kopf index (a Store), or none."""
    try:
        store = index[key]
    except KeyError:
        return []
    return list(store)
