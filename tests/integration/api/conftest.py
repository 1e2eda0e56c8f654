"""The opsmgr CRDs installed once per session on the real API server, and small kubectl helpers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from opsmgr.api import RESOURCES
from opsmgr.api.crd import crd_stream
from opsmgr.dev.cluster import LocalCluster


@pytest.fixture(scope="session")
def opsmgr_crds(kube_cluster: LocalCluster) -> LocalCluster:
    """The cluster with every opsmgr CRD applied (from the generator, as `opsmgr crds` prints them) and Established."""
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_stream(RESOURCES))
    names = [f"crd/{resource.crd_name()}" for resource in RESOURCES]
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return kube_cluster


class Kubectl:
    """kubectl in one namespace, speaking JSON."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def run(self, *args: str, input: str | None = None, check: bool = True) -> tuple[int, str]:
        """Exit code and stdout+stderr of kubectl in the namespace."""
        result = self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)
        return result.returncode, result.stdout + result.stderr

    def create(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Create the object and return it as the API server stored it (defaults filled in)."""
        out = self.cluster.kubectl("-n", self.namespace, "create", "-o", "json", "-f", "-", input=json.dumps(document))
        created: dict[str, Any] = json.loads(out.stdout)
        return created

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.cluster.kubectl("-n", self.namespace, "get", kind, name, "-o", "json")
        found: dict[str, Any] = json.loads(out.stdout)
        return found

    def patch_status(self, kind: str, name: str, status: Mapping[str, Any]) -> None:
        self.cluster.kubectl("-n", self.namespace, "patch", kind, name, "--subresource=status", "--type=merge",
                             "-p", json.dumps({"status": status}))


@pytest.fixture
def kubectl(opsmgr_crds: LocalCluster, namespace: str) -> Kubectl:
    """kubectl in a fresh namespace of the cluster that has the opsmgr CRDs."""
    return Kubectl(opsmgr_crds, namespace)
