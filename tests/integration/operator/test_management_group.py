"""The example ManagementGroup reconciled by the shipped operator (as its ServiceAccount) on a real API server."""

from __future__ import annotations

import functools
import json

from tests.integration.api.conftest import Kubectl
from tests.integration.operator.conftest import RunningOperator, condition, eventually, example, get_or_none

OWNED = [("secret", "production-server-tls"), ("secret", "production-db-credentials"),
         ("statefulset", "production-db"), ("service", "production-db"), ("configmap", "production-directory"),
         ("configmap", "production-revocations"), ("secret", "production-server-config")]


def absent(kubectl: Kubectl, kind: str, name: str) -> bool:
    return get_or_none(kubectl, kind, name) is None


def create_group(kubectl: Kubectl) -> dict[str, object]:
    return kubectl.create(example("management-group.yaml"))


def test_the_example_group_gets_its_children_owned_by_it_and_an_unowned_ca(kubectl: Kubectl,
                                                                          operator: RunningOperator) -> None:
    group = create_group(kubectl)
    uid = group["metadata"]["uid"]  # type: ignore[index]
    for kind, name in OWNED:
        child = eventually(functools.partial(get_or_none, kubectl, kind, name), what=f"{kind}/{name}")
        references = child["metadata"]["ownerReferences"]
        assert references == [{"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup", "name": "production",
                               "uid": uid, "controller": True, "blockOwnerDeletion": True}], (kind, name)
    ca = eventually(lambda: get_or_none(kubectl, "secret", "production-ca"), what="the CA Secret")
    assert "ownerReferences" not in ca["metadata"]
    assert ca["type"] == "kubernetes.io/tls"
    status = eventually(lambda: condition(get_or_none(kubectl, "managementgroup", "production"),
                                          "CertificatesReady"), what="CertificatesReady")
    assert status["status"] == "True", status
    # With no kubelet here PostgreSQL never starts: the group says so instead of pretending.
    databases = condition(get_or_none(kubectl, "managementgroup", "production"), "DatabasesReady")
    assert databases is not None and databases["status"] == "False"
    ready = condition(get_or_none(kubectl, "managementgroup", "production"), "Ready")
    assert ready is not None and ready["status"] == "False"
    assert "opsmgr_operator_api_requests_total" in operator.metrics()


def test_an_edited_child_is_put_back_within_30_seconds(kubectl: Kubectl) -> None:
    create_group(kubectl)
    eventually(lambda: get_or_none(kubectl, "statefulset", "production-db"), what="the database StatefulSet")
    eventually(lambda: get_or_none(kubectl, "configmap", "production-directory"), what="the directory")
    kubectl.run("scale", "statefulset", "production-db", "--replicas=3")
    kubectl.run("patch", "configmap", "production-directory", "--type=merge", "-p",
                json.dumps({"data": {"directory.yaml": "agents: [{fqdn: intruder.example.com, approval: Approved}]"}}))
    kubectl.run("patch", "secret", "production-server-tls", "--type=merge", "-p",
                json.dumps({"data": {"production-server-0.crt": "Z2FyYmFnZQ=="}}))
    eventually(lambda: get_or_none(kubectl, "statefulset", "production-db")["spec"]["replicas"] == 1,  # type: ignore[index]
               timeout=30, what="replicas put back to 1")
    eventually(lambda: "intruder" not in get_or_none(kubectl, "configmap", "production-directory")["data"][  # type: ignore[index]
        "directory.yaml"], timeout=30, what="the directory put back")
    eventually(lambda: get_or_none(kubectl, "secret", "production-server-tls")["data"][  # type: ignore[index]
        "production-server-0.crt"] != "Z2FyYmFnZQ==", timeout=30, what="a valid server certificate again")


def test_deleting_the_group_collects_its_children_and_keeps_the_ca(kubectl: Kubectl) -> None:
    create_group(kubectl)
    for kind, name in OWNED:
        eventually(functools.partial(get_or_none, kubectl, kind, name), what=f"{kind}/{name}")
    ca_before = eventually(lambda: get_or_none(kubectl, "secret", "production-ca"), what="the CA Secret")
    kubectl.run("delete", "managementgroup", "production", "--wait=true", "--timeout=60s")
    for kind, name in OWNED:
        eventually(functools.partial(absent, kubectl, kind, name), timeout=60, what=f"{kind}/{name} garbage-collected")
    ca_after = get_or_none(kubectl, "secret", "production-ca")
    assert ca_after is not None and ca_after["data"] == ca_before["data"]
    # A group created again under the same name takes up the same trust root.
    create_group(kubectl)
    eventually(lambda: condition(get_or_none(kubectl, "managementgroup", "production"), "CertificatesReady"),
               what="CertificatesReady of the new group")
    assert get_or_none(kubectl, "secret", "production-ca")["data"] == ca_before["data"]  # type: ignore[index]
