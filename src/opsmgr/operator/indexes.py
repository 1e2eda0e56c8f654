"""In-memory indexes kopf keeps from its watches, so handlers never list thousands of Agents from the API server.

Each entry is a small frozen snapshot of what the decisions need; kopf updates it on every watch event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from opsmgr.api.common import GROUP, VERSION


@dataclass(frozen=True)
class AgentEntry:
    name: str
    fqdn: str
    approval: str
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
        name=name, fqdn=str(spec.get("fqdn", "")).lower(), approval=str(status.get("approval", "Pending")),
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
