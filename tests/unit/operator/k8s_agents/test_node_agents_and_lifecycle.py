"""The node-agent DaemonSet and its files, the webhook's serving certificate, and when in-cluster Agents go."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from opsmgr.api import ManagementGroup
from opsmgr.operator.agent_lifecycle import PodStep, node_plan, pod_step, vanished
from opsmgr.operator.render_agents import (
    node_fqdn,
    render_node_agent,
    render_node_agent_access,
    render_node_agent_config_map,
    render_node_agent_daemonset,
    render_node_identity_secret,
)
from opsmgr.operator.webhook_tls import serving_identity
from opsmgr.pki.pem import load_certificate

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def group(**node_agents: Any) -> ManagementGroup:
    return ManagementGroup.model_validate({"metadata": {"name": "prod", "namespace": "ops", "uid": "g-1"},
                                           "spec": {"nodeAgents": {"enabled": True, **node_agents}}})


def test_the_daemonset_runs_each_nodes_own_files_with_its_queue_on_the_host() -> None:
    daemonset = render_node_agent_daemonset(group(queueHostPath="/data/opsmgr", nodeSelector={"pool": "a"}),
                                            "ghcr.io/opsmgr/opsmgr-agent:1")
    spec = daemonset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/opsmgr/agent.yaml"]["subPathExpr"] == "$(NODE_NAME).yaml"
    assert mounts["/var/opsmgr/identity/tls.crt"]["subPathExpr"] == "$(NODE_NAME).crt"
    assert mounts["/var/opsmgr/identity/tls.key"]["subPathExpr"] == "$(NODE_NAME).key"
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container["env"]
    queue = next(v for v in spec["volumes"] if v["name"] == "queue")
    assert queue["hostPath"] == {"path": "/data/opsmgr/ops_prod", "type": "DirectoryOrCreate"}
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "a"}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert daemonset["metadata"]["ownerReferences"][0]["uid"] == "g-1"
    assert "annotations" not in daemonset["spec"]["template"]["metadata"]  # a new node restarts no other agent


def test_node_files_are_keyed_by_node_and_the_binding_names_the_shipped_role() -> None:
    config_map = render_node_agent_config_map(group(), {"n1": {"fqdn": "n1.node.cluster.local"}})
    assert list(config_map["data"]) == ["n1.yaml"]
    secret = render_node_identity_secret(group(), {"n1": (b"CRT", b"KEY")}, b"CA")
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {"n1.crt": b"CRT", "n1.key": b"KEY",
                                                                          "ca.crt": b"CA"}
    account, binding = render_node_agent_access(group())
    assert binding["roleRef"]["name"] == "opsmgr-node-agent"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "ops"}]


def test_a_node_agent_is_named_for_its_group_and_node() -> None:
    agent = render_node_agent(group(), "worker-1")
    assert agent["metadata"]["name"] == "prod-node-worker-1"
    assert agent["spec"]["fqdn"] == "worker-1.node.cluster.local" and agent["spec"]["placement"] == "Node"
    assert node_fqdn("ip-10-0-0-1.ec2.internal") == "ip-10-0-0-1.ec2.internal"


def test_each_selected_node_gets_one_agent_and_gone_or_unselected_nodes_lose_theirs() -> None:
    nodes = {"a": {"pool": "x"}, "b": {"pool": "y"}, "c": {"pool": "x"}}
    plan = node_plan(nodes, {"pool": "x"}, ["a", "b", "gone"], enabled=True)
    assert plan.create == ("c",) and plan.retire == ("b", "gone")
    assert node_plan(nodes, {}, ["a"], enabled=False).retire == ("a",)


def test_a_pods_going_is_planned_before_it_is_gone() -> None:
    running = {"metadata": {}, "status": {"phase": "Running"}}
    assert pod_step("ADDED", running) is PodStep.ENSURE
    assert pod_step("MODIFIED", {"metadata": {"deletionTimestamp": "t"}}) is PodStep.RETIRING
    assert pod_step("MODIFIED", {"metadata": {}, "status": {"phase": "Succeeded"}}) is PodStep.RETIRING
    assert pod_step("DELETED", running) is PodStep.RETIRE


def test_an_agent_whose_pod_vanished_is_retired_only_after_a_quiet_period() -> None:
    created = NOW - timedelta(hours=1)
    quiet = timedelta(minutes=15)
    assert not vanished(NOW, pod_exists=True, created=created, last_heartbeat=None, retire_after=quiet)
    assert vanished(NOW, pod_exists=False, created=created, last_heartbeat=NOW - quiet, retire_after=quiet)
    assert not vanished(NOW, pod_exists=False, created=created, last_heartbeat=NOW - timedelta(minutes=1),
                        retire_after=quiet)


def test_the_webhook_certificate_names_its_hosts_and_is_kept_until_due() -> None:
    first = serving_identity({}, ["127.0.0.1", "opsmgr-operator-webhook.opsmgr-system.svc"], NOW)
    assert first.changed
    leaf = load_certificate(first.certificate_pem)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n) for n in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["opsmgr-operator-webhook.opsmgr-system.svc"]
    again = serving_identity(first.secret_data(), ["127.0.0.1", "opsmgr-operator-webhook.opsmgr-system.svc"],
                             NOW + timedelta(days=30))
    assert not again.changed
    renewed = serving_identity(first.secret_data(), ["127.0.0.1", "opsmgr-operator-webhook.opsmgr-system.svc"],
                               NOW + timedelta(days=300))
    assert renewed.changed and renewed.ca_pem == first.ca_pem  # the caBundle stays valid
    moved = serving_identity(first.secret_data(), ["127.0.0.2"], NOW + timedelta(days=1))
    assert moved.changed and moved.ca_pem == first.ca_pem


def test_the_local_runtime_expands_a_node_agents_subpathexpr_from_its_env() -> None:
    from opsmgr.dev.runtime_plan import mount_sub_path  # noqa: PLC0415 (the runtime the integration tests use)

    daemonset = render_node_agent_daemonset(group(), "ghcr.io/opsmgr/opsmgr-agent:1")
    pod = {"metadata": {"name": "a-1", "namespace": "ops"}, "spec": {**daemonset["spec"]["template"]["spec"],
                                                                   "nodeName": "worker-1"}}
    container = pod["spec"]["containers"][0]
    paths = [mount_sub_path(pod, container, m, secrets={}, config_maps={}, pod_ip="127.0.0.9", host_ip="127.0.0.1")
             for m in container["volumeMounts"]]
    assert paths == ["worker-1.yaml", "worker-1.crt", "worker-1.key", "ca.crt", None]
