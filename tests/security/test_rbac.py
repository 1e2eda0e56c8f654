"""Least privilege, asked of the real API server's authorizer: the operator (deploy/opsmgr.yaml, generated from the
chart) and the management servers (the Role the operator renders) may do exactly what they ship with, nothing else.

tests/integration/install/test_chart.py reads the rules; here kube-apiserver decides (`kubectl auth can-i --as`,
SelfSubjectRulesReview as `--list` does, and real writes impersonating the account, where escalation is checked).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import yaml

from opsmgr.api import RESOURCES, Gateway, ManagementGroup
from opsmgr.api.crd import crd_stream
from opsmgr.dev.cluster import LocalCluster
from opsmgr.operator import render, render_agents
from opsmgr.operator.names import FIELD_MANAGER
from opsmgr.protocol.enrollment import tokens_secret_name
from tests.integration.install.conftest import DEPLOY, Document, documents, find
from tests.unit.api.cases import EXAMPLES

IMAGE = "ghcr.io/opsmgr/opsmgr:test"


def account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Ask:
    """One question to the authorizer: may `verb` be done on resource[/subresource][ named name]?"""

    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    name: str = ""

    def args(self) -> list[str]:
        target = f"{self.resource}.{self.group}" if self.group else self.resource
        if self.name:
            target += f"/{self.name}"
        return [self.verb, target, *([f"--subresource={self.subresource}"] if self.subresource else [])]

    def __str__(self) -> str:
        return " ".join(self.args())


def asks(rules: Sequence[Document]) -> list[Ask]:
    """Every (verb, resource, name) a list of RBAC rules grants, one question each."""
    found: list[Ask] = []
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                base, _, sub = resource.partition("/")
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        found.append(Ask(verb, base, group, sub, name))
    return found


def can_i(cluster: LocalCluster, who: str, ask: Ask, namespace: str | None) -> bool:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    result = cluster.kubectl("auth", "can-i", *ask.args(), f"--as={who}", *scope, check=False)
    # A misspelt resource is still answered "yes" by RBAC's string match: kubectl warns, and that is a failure here.
    assert "doesn't have a resource type" not in result.stderr, f"{ask}: {result.stderr}"
    answer = result.stdout.strip()
    assert answer in {"yes", "no"}, f"{ask}: {result.stdout} {result.stderr}"
    return answer == "yes"


def answers(cluster: LocalCluster, who: str, questions: Sequence[Ask], namespace: str | None) -> dict[Ask, bool]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(questions, pool.map(lambda q: can_i(cluster, who, q, namespace), questions), strict=True))


def rules_review(cluster: LocalCluster, who: str, namespace: str) -> list[Document]:
    """What `kubectl auth can-i --list` shows, as data: the resource rules `who` holds in `namespace`."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    out = cluster.kubectl("create", "-o", "json", "--validate=false", f"--as={who}", "-f", "-",
                          input=json.dumps(review)).stdout
    rules: list[Document] = json.loads(out)["status"]["resourceRules"]
    return rules


def granted(rules: Sequence[Document]) -> set[Ask]:
    return set(asks(rules))


# --- the shipped identities on the real cluster ---

@dataclass(frozen=True)
class Shipped:
    cluster: LocalCluster
    docs: list[Document]
    operator: str
    operator_rules: list[Document]


@pytest.fixture(scope="module")
def shipped(kube_cluster: LocalCluster) -> Shipped:
    """deploy/opsmgr.yaml without its Deployment (the identity is what matters), plus the CRDs it works on."""
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_stream(RESOURCES))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *[f"crd/{r.crd_name()}" for r in RESOURCES])
    docs = [d for d in documents(DEPLOY.read_text()) if d["kind"] != "Deployment"]
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(docs))
    binding = find(docs, "ClusterRoleBinding")
    (subject,) = binding["subjects"]
    role = find(docs, "ClusterRole", binding["roleRef"]["name"])
    return Shipped(kube_cluster, docs, account(subject["namespace"], subject["name"]), role["rules"])


@pytest.fixture
def group(shipped: Shipped, namespace: str) -> ManagementGroup:
    """The example group, created for real so the children's ownerReferences point at a live object."""
    body = {**EXAMPLES["management-group"], "metadata": {"name": "production", "namespace": namespace}}
    out = shipped.cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(body)).stdout
    return ManagementGroup.from_body(json.loads(out))


@pytest.fixture
def servers(shipped: Shipped, group: ManagementGroup) -> str:
    """The servers' ServiceAccount, Role and RoleBinding as the operator renders them, applied; returns who."""
    access = render.render_server_access(group)
    shipped.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(access))
    return account(group.metadata.namespace or "", access[0]["metadata"]["name"])


@pytest.fixture
def other_namespace(kube_cluster: LocalCluster) -> Iterator[str]:
    """A second namespace that nothing of ours lives in."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def _baseline(cluster: LocalCluster, namespace: str) -> set[Ask]:
    """What any authenticated account holds (discovery, self reviews): an account with no binding at all."""
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "serviceaccount", nobody, "-n", namespace)
    return granted(rules_review(cluster, account(namespace, nobody), namespace))


# --- the operator ---

def test_the_operator_may_do_everything_its_cluster_role_names_in_any_namespace(shipped: Shipped,
                                                                              namespace: str) -> None:
    questions = asks(shipped.operator_rules)
    assert len(questions) > 40  # the role is read from the file, not empty by accident
    for scope in (namespace, None):
        refused = [str(q) for q, yes in answers(shipped.cluster, shipped.operator, questions, scope).items() if not yes]
        assert not refused, f"the shipped operator is refused ({scope or 'all namespaces'}): {refused}"


def test_the_operator_holds_nothing_beyond_its_cluster_role(shipped: Shipped, namespace: str) -> None:
    # `--list` as data: every rule the authorizer resolves for the operator is the chart's or everybody's.
    held = granted(rules_review(shipped.cluster, shipped.operator, namespace))
    extra = held - granted(shipped.operator_rules) - _baseline(shipped.cluster, namespace)
    assert not extra, f"the operator holds more than deploy/opsmgr.yaml grants: {sorted(map(str, extra))}"


def test_the_operator_can_write_every_child_it_renders(shipped: Shipped, group: ManagementGroup) -> None:
    # What the reconcilers apply for a group with an embedded database, node agents and a gateway: a server-side
    # dry run as the operator passes authorization, admission and RBAC's escalation check, and stores nothing.
    names = render.group_names(group)
    pods = names.server_pods(group.spec.servers.replicas)
    uris = render.embedded_uris(names, "not-a-real-password")
    gateway = Gateway.from_body({**EXAMPLES["gateway"], "metadata": {"name": "dmz", "namespace": names.namespace,
                                                                     "uid": group.metadata.uid}})
    children: list[Document] = [
        render.render_ca_secret(group, b"cert", b"key", b"trust", "2030-01-01T00:00:00Z"),
        render.render_server_tls_secret(group, {pod: (b"cert", b"key") for pod in pods}, b"trust"),
        render.render_database_credentials(group, "not-a-real-password"),
        render.render_database_service(group),
        render.render_database_statefulset(group, "postgres:16"),
        render.render_migration_job(group, IMAGE, "fingerprint"),
        render.render_server_config_secret(group, uris),
        render.render_server_enrollment_binding(group),
        *render.server_children(group, IMAGE, "hash"),
        render.render_directory_config_map(group, [], []),
        render.render_revocations_config_map(group, []),
        render_agents.render_node_agent(group, "node-1"),
        render_agents.render_node_agent_config_map(group, {}),
        render_agents.render_node_identity_secret(group, {"node-1": (b"cert", b"key")}, b"trust"),
        *render_agents.render_node_agent_access(group),
        render_agents.render_node_agent_daemonset(group, IMAGE),
        render.render_gateway_config_secret(gateway, group, pods[0], pods[1:]),
        render.render_gateway_deployment(gateway, names.group, IMAGE, "hash", "dmz-tls"),
        render.render_gateway_service(gateway, names.group),
    ]
    kinds = {child["kind"] for child in children}
    assert {"Role", "RoleBinding", "ClusterRoleBinding", "StatefulSet", "DaemonSet", "Job", "Secret"} <= kinds
    # As the operator applies: its field manager, so a running operator's own fields never conflict.
    apply = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
             f"--as={shipped.operator}", "-f", "-"]
    # Roles for real first: a RoleBinding's escalation check looks its Role up, and a dry run stores nothing.
    roles = [child for child in children if child["kind"] in {"Role", "ServiceAccount"}]
    shipped.cluster.kubectl(*apply, input=yaml.safe_dump_all(roles))
    result = shipped.cluster.kubectl(*apply, "--dry-run=server", input=yaml.safe_dump_all(children), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(children), result.stdout


# What a compromised operator must still not be able to do, anywhere.
OPERATOR_DENIED = [
    Ask("list", "secrets"), Ask("watch", "secrets"),
    Ask("create", "pods"), Ask("create", "pods", subresource="exec"), Ask("create", "pods", subresource="attach"),
    Ask("create", "pods", subresource="portforward"), Ask("get", "nodes", subresource="proxy"),
    Ask("patch", "nodes"), Ask("delete", "nodes"),
    Ask("create", "namespaces"), Ask("delete", "namespaces"),
    Ask("impersonate", "users"), Ask("impersonate", "groups"), Ask("impersonate", "serviceaccounts"),
    Ask("create", "serviceaccounts", subresource="token"),
    Ask("escalate", "clusterroles", "rbac.authorization.k8s.io"),
    Ask("escalate", "roles", "rbac.authorization.k8s.io"),
    Ask("bind", "clusterroles", "rbac.authorization.k8s.io", name="cluster-admin"),
    Ask("bind", "clusterroles", "rbac.authorization.k8s.io", name="admin"),
    Ask("bind", "clusterroles", "rbac.authorization.k8s.io", name="edit"),
    Ask("bind", "roles", "rbac.authorization.k8s.io", name="anything"),
    Ask("create", "clusterroles", "rbac.authorization.k8s.io"),
    Ask("patch", "clusterroles", "rbac.authorization.k8s.io", name="opsmgr-operator"),
    Ask("create", "customresourcedefinitions", "apiextensions.k8s.io"),
    Ask("patch", "customresourcedefinitions", "apiextensions.k8s.io", name="agents.opsmgr.io"),
    Ask("delete", "customresourcedefinitions", "apiextensions.k8s.io", name="agents.opsmgr.io"),
    Ask("patch", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", name="someone-elses"),
    Ask("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io"),
    Ask("patch", "validatingwebhookconfigurations", "admissionregistration.k8s.io", name="anything"),
    Ask("update", "certificatesigningrequests", "certificates.k8s.io", subresource="approval"),
    Ask("delete", "managementgroups", "opsmgr.io"),  # deleting a group is the user's decision, never the operator's
    Ask("delete", "persistentvolumeclaims"),  # database volumes outlive everything the operator does
]


def test_the_operator_is_denied_what_would_take_over_the_cluster(shipped: Shipped, namespace: str) -> None:
    for scope in (namespace, None):
        allowed = [str(q) for q, yes in answers(shipped.cluster, shipped.operator, OPERATOR_DENIED, scope).items()
                   if yes]
        assert not allowed, f"the operator may ({scope or 'all namespaces'}): {allowed}"


@pytest.mark.parametrize(("what", "document"), [
    ("a cluster-admin ClusterRoleBinding", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "opsmgr-takeover"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]}),
    # Not `admin`: this control plane runs no aggregation controller, so that role holds no rules here.
    ("a RoleBinding to cluster-admin in one namespace", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "opsmgr-takeover", "namespace": "NAMESPACE"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "NAMESPACE"}]}),
    ("a Role granting pods/exec", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "opsmgr-takeover", "namespace": "NAMESPACE"},
        "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]}),
    ("a Role listing Secrets", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "opsmgr-takeover", "namespace": "NAMESPACE"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}),
])
def test_the_operator_cannot_grant_what_it_does_not_hold(shipped: Shipped, namespace: str, what: str,
                                                         document: Document) -> None:
    # It may write Roles, RoleBindings and ClusterRoleBindings: the API server's escalation check is what stops it.
    text = json.dumps(document).replace("NAMESPACE", namespace)
    result = shipped.cluster.kubectl("create", f"--as={shipped.operator}", "-f", "-", input=text, check=False)
    assert result.returncode != 0, f"the operator created {what}"
    assert "forbidden" in result.stderr, result.stderr
    assert "not currently held" in result.stderr, result.stderr


# --- the management servers ---

def _server_rules(group: ManagementGroup) -> list[Document]:
    rules: list[Document] = find(render.render_server_access(group), "Role")["rules"]
    return rules


def test_the_servers_may_do_everything_their_role_names_in_their_own_namespace_only(
        shipped: Shipped, group: ManagementGroup, servers: str, other_namespace: str) -> None:
    questions = asks(_server_rules(group))
    assert len(questions) > 20
    home = answers(shipped.cluster, servers, questions, group.metadata.namespace)
    assert not [str(q) for q, yes in home.items() if not yes], "the servers are refused in their own namespace"
    away = answers(shipped.cluster, servers, questions, other_namespace)
    assert not [str(q) for q, yes in away.items() if yes], "the servers' Role reaches another namespace"


def test_the_servers_hold_nothing_beyond_their_role_and_token_review(
        shipped: Shipped, group: ManagementGroup, servers: str, other_namespace: str) -> None:
    namespace = group.metadata.namespace or ""
    # The operator also binds them to the shipped enrollment ClusterRole: apply that binding as it does.
    binding = render.render_server_enrollment_binding(group)
    shipped.cluster.kubectl("apply", "--server-side", f"--as={shipped.operator}", "-f", "-",
                            input=yaml.safe_dump(binding))
    try:
        enrollment = find(shipped.docs, "ClusterRole", binding["roleRef"]["name"])["rules"]
        home = granted(rules_review(shipped.cluster, servers, namespace)) - _baseline(shipped.cluster, namespace)
        assert home == granted(_server_rules(group)) | granted(enrollment), sorted(map(str, home))
        away = granted(rules_review(shipped.cluster, servers, other_namespace))
        assert away - _baseline(shipped.cluster, other_namespace) == granted(enrollment), sorted(map(str, away))
    finally:
        shipped.cluster.kubectl("delete", "clusterrolebinding", binding["metadata"]["name"], "--ignore-not-found")


def _server_denied(group: ManagementGroup) -> list[Ask]:
    names = render.group_names(group)
    return [
        # Secrets other than the CA and the join tokens: the database password, agents' keys, anybody's.
        Ask("get", "secrets", name=names.database_credentials), Ask("get", "secrets", name=names.server_tls_secret),
        Ask("get", "secrets", name="default-token"), Ask("list", "secrets"), Ask("watch", "secrets"),
        Ask("patch", "secrets", name=render.ca_secret_of(group)), Ask("create", "secrets"),
        Ask("delete", "secrets", name=render.ca_secret_of(group)),
        Ask("create", "pods"), Ask("delete", "pods"), Ask("create", "pods", subresource="exec"),
        Ask("get", "nodes", subresource="proxy"), Ask("delete", "namespaces"),
        Ask("impersonate", "serviceaccounts"), Ask("create", "serviceaccounts", subresource="token"),
        Ask("escalate", "roles", "rbac.authorization.k8s.io"),
        Ask("create", "rolebindings", "rbac.authorization.k8s.io"),
        Ask("patch", "roles", "rbac.authorization.k8s.io"),
        Ask("bind", "clusterroles", "rbac.authorization.k8s.io", name="cluster-admin"),
        Ask("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
        Ask("patch", "customresourcedefinitions", "apiextensions.k8s.io", name="agents.opsmgr.io"),
        # The group, packs and gateways are the user's; servers only read them and write agents' and tasks' status.
        Ask("patch", "managementgroups", "opsmgr.io"), Ask("patch", "managementpacks", "opsmgr.io"),
        Ask("delete", "agents", "opsmgr.io"), Ask("create", "agenttasks", "opsmgr.io"),
        Ask("patch", "managementgroups", "opsmgr.io", subresource="status"),
        Ask("patch", "gateways", "opsmgr.io", subresource="status"),
        Ask("patch", "configmaps"), Ask("patch", "statefulsets", "apps"),
    ]


def test_the_servers_are_denied_everything_else(shipped: Shipped, group: ManagementGroup, servers: str,
                                                other_namespace: str) -> None:
    denied = _server_denied(group)
    for scope in (group.metadata.namespace, other_namespace, None):
        allowed = [str(q) for q, yes in answers(shipped.cluster, servers, denied, scope).items() if yes]
        assert not allowed, f"the servers may ({scope or 'all namespaces'}): {allowed}"
    # And their Secrets by name are only the ones in their own namespace.
    names = [render.ca_secret_of(group), tokens_secret_name(render.group_names(group).group)]
    away = answers(shipped.cluster, servers, [Ask("get", "secrets", name=n) for n in names], other_namespace)
    assert not any(away.values()), away


def test_a_server_token_cannot_read_a_secret_it_was_not_granted(shipped: Shipped, group: ManagementGroup,
                                                                servers: str) -> None:
    # A real read with the servers' identity: the database password Secret exists and is still refused.
    namespace = group.metadata.namespace or ""
    credentials = render.render_database_credentials(group, "not-a-real-password")
    shipped.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(credentials))
    result = shipped.cluster.kubectl("get", "secret", credentials["metadata"]["name"], "-n", namespace, "-o", "json",
                                     f"--as={servers}", check=False)
    assert result.returncode != 0
    assert "forbidden" in result.stderr and "not-a-real-password" not in result.stdout, result.stderr
