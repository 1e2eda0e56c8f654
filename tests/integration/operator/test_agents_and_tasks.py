"""Agents under each approval policy, revocation on withdrawal and deletion, and AgentTask fan-out, reconciled by
the shipped operator against the real API server.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import yaml

from tests.integration.api.conftest import Kubectl
from tests.integration.operator.conftest import RunningOperator, condition, eventually, example, get_or_none


def group(name: str, policy: str) -> dict[str, Any]:
    return {"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup", "metadata": {"name": name},
            "spec": {"approvalPolicy": policy, "servers": {"replicas": 2}}}


def agent(name: str, group_name: str, placement: str = "Node", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "opsmgr.io/v1alpha1", "kind": "Agent",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"managementGroupRef": {"name": group_name}, "fqdn": f"{name}.example.com",
                     "placement": placement}}


def status_of(kubectl: Kubectl, name: str, field: str) -> Any:
    return ((get_or_none(kubectl, "agent", name) or {}).get("status") or {}).get(field)


def approval_is(kubectl: Kubectl, name: str, wanted: str) -> bool:
    return bool(status_of(kubectl, name, "approval") == wanted)


def revoked_serials(kubectl: Kubectl, group_name: str) -> set[str]:
    found = get_or_none(kubectl, "configmap", f"{group_name}-revocations")
    document = yaml.safe_load(((found or {}).get("data") or {}).get("revocations.yaml") or "") or {}
    return {entry["serial"] for entry in document.get("revocations") or []}


def test_auto_approve_issues_a_certificate_and_assigns_servers(kubectl: Kubectl) -> None:
    kubectl.create(group("auto", "AutoApprove"))
    kubectl.create(agent("node-a", "auto"))
    eventually(lambda: condition(get_or_none(kubectl, "agent", "node-a"), "Ready") is not None and
               condition(get_or_none(kubectl, "agent", "node-a"), "Ready")["status"] == "True",  # type: ignore[index]
               what="the agent Ready")
    status = get_or_none(kubectl, "agent", "node-a")["status"]  # type: ignore[index]
    assert status["approval"] == "Approved"
    assert status["primaryServer"] in ("auto-server-0", "auto-server-1")
    assert status["failoverServers"] == [{"auto-server-0", "auto-server-1"}.difference({status["primaryServer"]})
                                         .pop()]
    secret = get_or_none(kubectl, "secret", "node-a-tls")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["kind"] == "Agent"
    assert status["certificate"]["serialNumber"]
    directory = eventually(lambda: "node-a.example.com" in get_or_none(kubectl, "configmap", "auto-directory")[  # type: ignore[index]
        "data"]["directory.yaml"], what="the agent in the servers' directory")
    assert directory


def test_reject_policy_rejects_and_issues_nothing(kubectl: Kubectl) -> None:
    kubectl.create(group("closed", "Reject"))
    kubectl.create(agent("node-r", "closed"))
    eventually(functools.partial(approval_is, kubectl, "node-r", "Rejected"), what="Rejected")
    ready = condition(get_or_none(kubectl, "agent", "node-r"), "Ready")
    assert ready is not None and ready["status"] == "False"
    assert get_or_none(kubectl, "secret", "node-r-tls") is None


def test_review_waits_for_a_person_and_a_withdrawn_approval_revokes_the_certificate(kubectl: Kubectl) -> None:
    kubectl.create(group("reviewed", "Review"))
    kubectl.create(agent("node-v", "reviewed"))
    eventually(lambda: (condition(get_or_none(kubectl, "agent", "node-v"), "Approved") or {}).get("reason")
               == "PendingApproval", what="PendingApproval")
    assert get_or_none(kubectl, "secret", "node-v-tls") is None
    kubectl.run("annotate", "agent", "node-v", "opsmgr.io/approval=Approved")
    eventually(functools.partial(approval_is, kubectl, "node-v", "Approved"), what="Approved")
    serial = eventually(lambda: (status_of(kubectl, "node-v", "certificate") or {}).get("serialNumber"),
                        what="a certificate")
    assert get_or_none(kubectl, "secret", "node-v-tls") is not None
    kubectl.run("annotate", "--overwrite", "agent", "node-v", "opsmgr.io/approval=Rejected")
    eventually(functools.partial(approval_is, kubectl, "node-v", "Rejected"), what="Rejected")
    eventually(lambda: serial in revoked_serials(kubectl, "reviewed"), what="the serial revoked")
    eventually(lambda: get_or_none(kubectl, "secret", "node-v-tls") is None, what="the certificate Secret gone")


def test_pending_agents_are_judged_again_when_the_group_policy_changes_to_one_that_decides(kubectl: Kubectl) -> None:
    kubectl.create(group("switched", "Review"))
    for name in ("node-p1", "node-p2"):
        kubectl.create(agent(name, "switched"))
    for name in ("node-p1", "node-p2"):
        eventually(functools.partial(approval_is, kubectl, name, "Pending"), what=f"{name} Pending")
    kubectl.run("patch", "managementgroup", "switched", "--type=merge", "-p",
                json.dumps({"spec": {"approvalPolicy": "AutoApprove"}}))
    for name in ("node-p1", "node-p2"):
        eventually(functools.partial(approval_is, kubectl, name, "Approved"), what=f"{name} approved by the policy")
        reason = (condition(get_or_none(kubectl, "agent", name), "Approved") or {}).get("reason")
        assert reason == "AutoApproved"
    eventually(lambda: get_or_none(kubectl, "secret", "node-p1-tls") is not None, what="a certificate Secret")


def test_deleting_an_agent_revokes_its_certificate(kubectl: Kubectl) -> None:
    kubectl.create(group("fleet", "AutoApprove"))
    kubectl.create(agent("node-d", "fleet"))
    serial = eventually(lambda: (status_of(kubectl, "node-d", "certificate") or {}).get("serialNumber"),
                        what="a certificate")
    kubectl.run("delete", "agent", "node-d", "--wait=true", "--timeout=60s")
    assert serial in revoked_serials(kubectl, "fleet")


def test_scaling_the_servers_rebalances_agents(kubectl: Kubectl) -> None:
    kubectl.create(group("scaled", "AutoApprove"))
    names = [f"host-{i}" for i in range(12)]
    for name in names:
        kubectl.create(agent(name, "scaled", placement="Host"))
    eventually(lambda: all(status_of(kubectl, n, "primaryServer") for n in names), what="every agent assigned")
    kubectl.run("patch", "managementgroup", "scaled", "--type=merge", "-p",
                json.dumps({"spec": {"servers": {"replicas": 3}}}))
    eventually(lambda: any(status_of(kubectl, n, "primaryServer") == "scaled-server-2" for n in names), timeout=40,
               what="some agents moved to the new server")


@pytest.fixture
def other_namespace(kubectl: Kubectl) -> Any:
    """A second namespace: a group takes Agents from any namespace that names it."""
    name = f"{kubectl.namespace}-other"
    kubectl.cluster.kubectl("create", "namespace", name)
    yield Kubectl(kubectl.cluster, name)
    kubectl.cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def in_group_of(document: dict[str, Any], group_namespace: str) -> dict[str, Any]:
    document["spec"]["managementGroupRef"]["namespace"] = group_namespace
    return document


def test_agents_in_any_namespace_are_rebalanced_and_renewed(kubectl: Kubectl, other_namespace: Kubectl) -> None:
    # Certificates valid for an hour and renewed 15 s after issue: the group's pass must renew them in time.
    spec = group("renewing", "AutoApprove")
    spec["spec"]["certificates"] = {"validity": "1h", "renewBefore": "59m45s"}
    kubectl.create(spec)
    kubectl.create(agent("near", "renewing"))
    other_namespace.create(in_group_of(agent("far", "renewing"), kubectl.namespace))
    places = ((kubectl, "near"), (other_namespace, "far"))
    first = {name: eventually(functools.partial(serial_of, k, name), what=f"{name}'s certificate")
             for k, name in places}
    for k, name in places:
        eventually(functools.partial(renewed, k, name, first[name]), timeout=60, what=f"{name}'s certificate renewed")
    kubectl.run("patch", "managementgroup", "renewing", "--type=merge", "-p",
                json.dumps({"spec": {"servers": {"replicas": 1}}}))
    for k, name in places:
        eventually(functools.partial(alone_on_server_0, k, name), timeout=40,
                   what=f"{name} moved onto the one server left")


def serial_of(kubectl: Kubectl, name: str) -> str | None:
    return (status_of(kubectl, name, "certificate") or {}).get("serialNumber")


def renewed(kubectl: Kubectl, name: str, first: str) -> bool:
    return serial_of(kubectl, name) not in (None, first)


def alone_on_server_0(kubectl: Kubectl, name: str) -> bool:
    return bool(status_of(kubectl, name, "primaryServer") == "renewing-server-0"
                and status_of(kubectl, name, "failoverServers") in (None, []))


@pytest.mark.parametrize("selector_role", ["db"])
def test_a_selector_task_fans_out_to_one_child_per_agent_and_sums_them_up(kubectl: Kubectl,
                                                                          selector_role: str) -> None:
    kubectl.create(group("production", "AutoApprove"))
    kubectl.create(example("management-pack-linux.yaml"))
    for name, role in (("db-1", "db"), ("db-2", "db"), ("web-1", "web")):
        kubectl.create(agent(name, "production", "Host", {"role": role}))
    eventually(lambda: all(status_of(kubectl, n, "approval") == "Approved" for n in ("db-1", "db-2")),
               what="agents approved")
    parent = kubectl.create({
        "apiVersion": "opsmgr.io/v1alpha1", "kind": "AgentTask", "metadata": {"name": "restart-db"},
        "spec": {"task": {"managementPack": "linux-base", "name": "restart-service"},
                 "agentSelector": {"matchLabels": {"role": selector_role}},
                 "parameters": [{"name": "service", "value": "postgresql"}]}})
    children = eventually(lambda: [c for c in json.loads(kubectl.run("get", "agenttasks", "-l",
                                                                     "opsmgr.io/parent-task=restart-db",
                                                                     "-o", "json")[1])["items"]] or None,
                          what="children")
    eventually(lambda: len(json.loads(kubectl.run("get", "agenttasks", "-l", "opsmgr.io/parent-task=restart-db",
                                                  "-o", "json")[1])["items"]) == 2, what="two children")
    children = json.loads(kubectl.run("get", "agenttasks", "-l", "opsmgr.io/parent-task=restart-db",
                                      "-o", "json")[1])["items"]
    assert sorted(c["spec"]["agent"] for c in children) == ["db-1", "db-2"]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["uid"] == parent["metadata"]["uid"]
    eventually(lambda: ((get_or_none(kubectl, "agenttask", "restart-db") or {}).get("status") or {}).get(
        "children", {}).get("total") == 2, what="children counted")
    # The servers report phases; here the test plays them.
    first, second = sorted(c["metadata"]["name"] for c in children)
    kubectl.patch_status("agenttask", first, {"phase": "Succeeded", "exitCode": 0})
    kubectl.patch_status("agenttask", second, {"phase": "Failed", "exitCode": 3})
    eventually(lambda: (get_or_none(kubectl, "agenttask", "restart-db") or {}).get("status", {}).get("phase")
               == "Failed", what="the parent Failed")
    counts = get_or_none(kubectl, "agenttask", "restart-db")["status"]["children"]  # type: ignore[index]
    assert counts == {"total": 2, "pending": 0, "running": 0, "succeeded": 1, "failed": 1}


def test_a_task_naming_an_unknown_pack_is_refused_with_the_reason(kubectl: Kubectl) -> None:
    kubectl.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "AgentTask", "metadata": {"name": "lost"},
                    "spec": {"task": {"managementPack": "nope", "name": "x"}, "agent": "a"}})
    accepted = eventually(lambda: condition(get_or_none(kubectl, "agenttask", "lost"), "Accepted"),
                          what="Accepted decided")
    assert accepted["status"] == "False" and "does not exist" in accepted["message"]
    assert get_or_none(kubectl, "agenttask", "lost")["status"]["phase"] == "Failed"  # type: ignore[index]


def test_a_pack_with_a_dangling_override_is_not_ready_and_says_why(kubectl: Kubectl) -> None:
    kubectl.create(group("production", "Review"))
    pack = example("management-pack-linux.yaml")
    pack["spec"]["overrides"] = [*pack["spec"].get("overrides", []),
                                 {"name": "ghost", "rule": "no-such-rule", "parameter": "Enabled", "value": "false"}]
    kubectl.create(pack)
    valid = eventually(lambda: condition(get_or_none(kubectl, "managementpack", "linux-base"), "Valid"),
                       what="Valid decided")
    assert valid["status"] == "False" and "no-such-rule" in valid["message"]
    status = get_or_none(kubectl, "managementpack", "linux-base")["status"]  # type: ignore[index]
    assert status["rules"] == len(pack["spec"]["rules"]) and status["tasks"] == len(pack["spec"]["tasks"])


def test_a_restarted_operator_that_finds_more_agents_than_workers_still_reconciles_new_ones(
        kubectl: Kubectl, operator: RunningOperator) -> None:
    # 80 Agents of a group that does not exist (yet): each one's reconcile waits and retries. A restarted operator
    # lists them all at once; with kopf's worker limit below that count its first workers waited for an index that
    # the queued rest never filled, and nothing in the cluster was reconciled again.
    kubectl.run("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        agent(f"early-{n:02d}", "not-yet", placement="Host") for n in range(80)]}))
    operator.restart()
    kubectl.create(group("after-restart", "AutoApprove"))
    kubectl.create(agent("node-late", "after-restart"))
    eventually(lambda: (condition(get_or_none(kubectl, "agent", "node-late"), "Ready") or {}).get("status") == "True",
               what="the new agent Ready after the restart", timeout=90)
