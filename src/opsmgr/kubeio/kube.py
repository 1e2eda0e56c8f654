"""A thin, typed door to the API server over kubernetes_asyncio's ApiClient, shared by the operator and the servers.

Manifests are plain dicts in and out; server-side apply (forced, one field manager) both creates a child and puts
back whatever someone changed in the fields the caller owns. Requests are counted when a counter is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import Counter

Manifest = dict[str, Any]

# kind -> plural of every kind opsmgr reads or writes.
PLURALS: dict[str, str] = {
    "Secret": "secrets", "ConfigMap": "configmaps", "Service": "services", "ServiceAccount": "serviceaccounts",
    "Pod": "pods", "Event": "events", "StatefulSet": "statefulsets", "Deployment": "deployments", "Job": "jobs",
    "PodDisruptionBudget": "poddisruptionbudgets", "Role": "roles", "RoleBinding": "rolebindings",
    "ManagementGroup": "managementgroups", "Agent": "agents", "Gateway": "gateways",
    "ManagementPack": "managementpacks", "AgentTask": "agenttasks", "Lease": "leases",
    "ClusterRoleBinding": "clusterrolebindings",
}


class KubeError(RuntimeError):
    """A request the API server refused; `status` is the HTTP code (403 often means RBAC is missing a verb)."""

    def __init__(self, status: int, verb: str, what: str, message: str) -> None:
        self.status = status
        super().__init__(f"{verb} {what}: HTTP {status}: {message}")

    @property
    def conflict(self) -> bool:
        return self.status == 409


def _reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    return str(body.get("message") or exc.reason)


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    namespace: str | None
    name: str | None = None

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Ref:
        meta = manifest.get("metadata") or {}
        return cls(str(manifest["apiVersion"]), str(manifest["kind"]), meta.get("namespace"), meta.get("name"))

    def path(self, subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        plural = PLURALS[self.kind]
        path = f"{base}/namespaces/{self.namespace}/{plural}" if self.namespace else f"{base}/{plural}"
        if self.name:
            path += f"/{self.name}"
        if subresource:
            path += f"/{subresource}"
        return path

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Kube:
    """Async requests on the one ApiClient the operator opens at startup."""

    def __init__(self, api: kube_client.ApiClient, *, field_manager: str, requests: Counter | None = None) -> None:
        self.api = api
        self.field_manager = field_manager
        self.requests = requests

    async def _call(self, verb: str, ref: Ref, method: str, path: str, *, body: Any = None,
                    query: list[tuple[str, str]] | None = None, content_type: str = "application/json") -> Any:
        resource = PLURALS[ref.kind]
        try:
            result = await self.api.call_api(
                path, method, query_params=query or [], header_params={"Content-Type": content_type,
                                                                       "Accept": "application/json"},
                body=body, response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True)
        except ApiException as exc:
            self._count(verb, resource, str(exc.status))
            raise KubeError(int(exc.status or 0), verb, str(ref), _reason(exc)) from None
        self._count(verb, resource, "200")
        return result

    def _count(self, verb: str, resource: str, code: str) -> None:
        if self.requests is not None:
            self.requests.labels(verb, resource, code).inc()

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        """The object, or None when it does not exist."""
        ref = Ref(api_version, kind, namespace, name)
        try:
            found: Manifest = await self._call("get", ref, "GET", ref.path())
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return found

    async def list(self, api_version: str, kind: str, namespace: str,
                   label_selector: Mapping[str, str] | None = None) -> list[Manifest]:
        ref = Ref(api_version, kind, namespace)
        query = []
        if label_selector:
            query.append(("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))))
        listed = await self._call("list", ref, "GET", ref.path(), query=query)
        items: list[Manifest] = listed.get("items") or []
        return items

    async def apply(self, manifest: Mapping[str, Any]) -> Manifest:
        """Server-side apply, forced: creates the object, or makes the operator's fields what `manifest` says."""
        ref = Ref.of(manifest)
        applied: Manifest = await self._call(
            "apply", ref, "PATCH", ref.path(), body=dict(manifest),
            query=[("fieldManager", self.field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml")
        return applied

    async def create(self, manifest: Mapping[str, Any]) -> Manifest | None:
        """Create the object; None when it already exists (someone else won the race)."""
        ref = Ref.of(manifest)
        collection = Ref(ref.api_version, ref.kind, ref.namespace)
        try:
            created: Manifest = await self._call("create", ref, "POST", collection.path(), body=dict(manifest),
                                                 query=[("fieldManager", self.field_manager)])
        except KubeError as error:
            if error.conflict:
                return None
            raise
        return created

    async def merge_patch(self, ref: Ref, patch: Mapping[str, Any], subresource: str | None = None) -> Manifest:
        """A JSON merge patch; put metadata.resourceVersion in it to make it fail (409) on a newer object."""
        patched: Manifest = await self._call("patch", ref, "PATCH", ref.path(subresource), body=dict(patch),
                                             content_type="application/merge-patch+json")
        return patched

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete the object; False when it was already gone."""
        ref = Ref(api_version, kind, namespace, name)
        try:
            await self._call("delete", ref, "DELETE", ref.path(), body={"propagationPolicy": "Background"})
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True
