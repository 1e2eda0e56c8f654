"""The webhook's decision and JSON patch, the in-cluster agent's configuration and its Agent resources."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch  # kopf's own dependency
import pytest
import yaml

from opsmgr.api import ManagementGroup
from opsmgr.operator.render_agents import (
    AGENT_ANNOTATION,
    CONFIG_ANNOTATION,
    GROUP_ANNOTATION,
    INJECT_LABEL,
    SIDECAR,
    admission_response,
    plan_injection,
    queue_size_limit,
    render_sidecar_agent,
)

IMAGE = "ghcr.io/opsmgr/opsmgr-agent:test"


def group(name: str = "prod", namespace: str = "ops", **spec: Any) -> ManagementGroup:
    return ManagementGroup.model_validate({"metadata": {"name": name, "namespace": namespace, "uid": "g-1"},
                                           "spec": spec})


def pod(**meta: Any) -> dict[str, Any]:
    metadata = {"generateName": "web-7d9f-", "labels": {INJECT_LABEL: "true", "app": "web"}, **meta}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}


def apply(document: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(document), patch)
    return patched


GROUPS = {("ops", "prod"): group()}


def test_a_labelled_pod_gets_a_native_sidecar_that_starts_first_and_its_name() -> None:
    original = pod()
    original["spec"]["initContainers"] = [{"name": "migrate", "image": "tool"}]
    injection = plan_injection(original, "shop", GROUPS, image=IMAGE, name_suffix="abcde")
    patched = apply(original, injection.patch)
    assert patched["metadata"]["name"] == "web-7d9f-abcde"
    first = patched["spec"]["initContainers"][0]
    assert first["name"] == SIDECAR and first["restartPolicy"] == "Always" and first["image"] == IMAGE
    assert [c["name"] for c in patched["spec"]["initContainers"]] == [SIDECAR, "migrate"]
    assert patched["metadata"]["annotations"][AGENT_ANNOTATION] == "web-7d9f-abcde"
    assert {"name": "OPSMGR_CONTAINERS", "value": "web=nginx:1"} in first["env"]


def test_the_agent_configuration_names_the_pod_and_its_assigned_servers() -> None:
    injection = plan_injection(pod(name="web-0"), "shop", {("ops", "prod"): group(servers={"replicas": 3})},
                               image=IMAGE, name_suffix="x")
    config = yaml.safe_load(apply(pod(name="web-0"), injection.patch)["metadata"]["annotations"][CONFIG_ANNOTATION])
    assert config["fqdn"] == "web-0.shop.pod.cluster.local"
    assert config["placement"] == "sidecar"
    servers = [config["servers"]["primary"], *config["servers"]["failover"]]
    assert len(set(servers)) == 2 and set(servers) <= {f"prod-server-{i}.ops.svc:5723" for i in range(3)}
    assert config["certificates"] == {"directory": "identity", "renew": False, "wait_for_identity": True}
    assert config["collection"]["labels"] == {INJECT_LABEL: "true", "app": "web"}


def test_the_queue_volume_is_larger_than_the_queue_so_the_agent_evicts_before_the_kubelet() -> None:
    injection = plan_injection(pod(), "ops", {("ops", "prod"): group(sidecarAgents={"queueLimitMB": 40})},
                               image=IMAGE, name_suffix="abcde")
    patched = apply(pod(), injection.patch)
    queue = next(v for v in patched["spec"]["volumes"] if "emptyDir" in v)
    config = yaml.safe_load(patched["metadata"]["annotations"][CONFIG_ANNOTATION])
    assert queue["emptyDir"]["sizeLimit"] == queue_size_limit(40) == "82Mi"
    assert config["queue"]["limit_bytes"] == 40 * 1024 * 1024
    identity = next(v for v in patched["spec"]["volumes"] if "secret" in v)
    assert identity["secret"] == {"secretName": "web-7d9f-abcde-tls", "optional": True, "defaultMode": 0o444}


def test_existing_annotations_volumes_and_a_short_grace_period_are_extended_not_replaced() -> None:
    original = pod(annotations={"team": "a/b"})
    original["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    original["spec"]["terminationGracePeriodSeconds"] = 5
    patched = apply(original, plan_injection(original, "ops", GROUPS, image=IMAGE, name_suffix="q").patch)
    assert patched["metadata"]["annotations"]["team"] == "a/b"
    assert patched["spec"]["volumes"][0]["name"] == "data" and len(patched["spec"]["volumes"]) == 4
    assert patched["spec"]["terminationGracePeriodSeconds"] == 20


def test_a_pod_that_already_has_the_agent_is_left_alone() -> None:
    first = apply(pod(), plan_injection(pod(), "ops", GROUPS, image=IMAGE, name_suffix="abcde").patch)
    assert plan_injection(first, "ops", GROUPS, image=IMAGE, name_suffix="zzzzz").patch == []


@pytest.mark.parametrize("labels", [{}, {INJECT_LABEL: "false"},
                                    {INJECT_LABEL: "true", "app.kubernetes.io/managed-by": "opsmgr-operator"}])
def test_pods_that_do_not_ask_and_opsmgrs_own_pods_get_nothing(labels: dict[str, str]) -> None:
    assert plan_injection(pod(labels=labels), "ops", GROUPS, image=IMAGE, name_suffix="a").patch == []


def test_the_group_comes_from_the_annotation_or_is_the_only_one() -> None:
    two = {("ops", "prod"): group(), ("ops", "test"): group("test")}
    ambiguous = plan_injection(pod(), "shop", two, image=IMAGE, name_suffix="a")
    assert ambiguous.patch == [] and "several ManagementGroups" in ambiguous.warnings[0]
    chosen = plan_injection(pod(annotations={GROUP_ANNOTATION: "ops/test"}), "shop", two, image=IMAGE,
                            name_suffix="a")
    patched = apply(pod(annotations={GROUP_ANNOTATION: "ops/test"}), chosen.patch)
    assert patched["metadata"]["annotations"]["opsmgr.io/agent-group"] == "ops/test"
    missing = plan_injection(pod(annotations={GROUP_ANNOTATION: "nope"}), "shop", two, image=IMAGE, name_suffix="a")
    assert missing.patch == [] and "names no ManagementGroup" in missing.warnings[0]
    assert "no ManagementGroup exists" in plan_injection(pod(), "shop", {}, image=IMAGE, name_suffix="a").warnings[0]


def test_a_group_that_rejects_new_agents_gets_no_sidecar_and_says_why() -> None:
    injection = plan_injection(pod(), "ops", {("ops", "prod"): group(approvalPolicy="Reject")}, image=IMAGE,
                               name_suffix="a")
    assert injection.patch == [] and "Reject" in injection.warnings[0]


def test_the_admission_response_carries_the_patch_as_base64_json() -> None:
    patch = [{"op": "add", "path": "/metadata/name", "value": "x"}]
    response = admission_response("u-1", patch, ["careful"])["response"]
    assert response["uid"] == "u-1" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == patch and response["warnings"] == ["careful"]
    assert "patch" not in admission_response("u-2", [])["response"]


def test_the_sidecar_agent_is_owned_by_its_pod_approved_and_placed() -> None:
    created = apply(pod(), plan_injection(pod(), "shop", GROUPS, image=IMAGE, name_suffix="abcde").patch)
    created["metadata"] |= {"namespace": "shop", "uid": "p-1"}
    agent = render_sidecar_agent(created, ("ops", "prod"), 40)
    assert agent["metadata"]["name"] == "web-7d9f-abcde"
    assert agent["metadata"]["ownerReferences"][0] | {} == {"apiVersion": "v1", "kind": "Pod",
                                                           "name": "web-7d9f-abcde", "uid": "p-1",
                                                           "blockOwnerDeletion": False}
    assert agent["metadata"]["annotations"] == {"opsmgr.io/approval": "Approved"}
    assert agent["spec"] == {"managementGroupRef": {"name": "prod", "namespace": "ops"},
                             "fqdn": "web-7d9f-abcde.shop.pod.cluster.local", "placement": "Sidecar",
                             "queueLimitMB": 40}
