"""The chart as helm renders it: lint, defaults a user relies on, values refused with a message, generated files."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.integration.install.conftest import (
    CHART,
    CRDS,
    MANIFESTS_TOOL,
    ROOT,
    Document,
    Helm,
    documents,
    find,
    kinds,
)

CRD_FILES = sorted(CRDS.glob("*.opsmgr.io.yaml"))


def test_helm_lint_is_clean_in_strict_mode(helm: Helm) -> None:
    result = helm.run("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


def test_default_install_is_the_operator_its_rights_metrics_and_the_crds(helm: Helm) -> None:
    docs = helm.template()
    # Three ClusterRoles: the operator's, and the two it may bind (server enrollment, node agents).
    assert kinds(docs) == sorted([
        "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount",
        *["CustomResourceDefinition"] * len(CRD_FILES),
    ])


def test_operator_runs_once_never_two_at_a_time_as_non_root_with_a_liveness_probe(helm: Helm) -> None:
    deployment = find(helm.template(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["opsmgr", "operator"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["serviceAccountName"] == find(helm.template(), "ServiceAccount")["metadata"]["name"]


def test_metrics_service_reaches_the_operators_metrics_port(helm: Helm) -> None:
    docs = helm.template("--set", "operator.metricsPort=9191", "--set", "metrics.service.port=9191")
    service = find(docs, "Service")
    deployment = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9191, "targetPort": "metrics", "protocol": "TCP"}]
    assert ports["metrics"] == 9191
    assert "--metrics-port=9191" in container["args"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_image_tag_defaults_to_the_app_version_and_a_digest_wins(helm: Helm) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (container,) = find(helm.template(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/opsmgr/opsmgr:{app_version}"
    digest = "sha256:" + "ab" * 32
    (pinned,) = find(helm.template("--set", f"image.digest={digest}"),
                     "Deployment")["spec"]["template"]["spec"]["containers"]
    assert pinned["image"] == f"ghcr.io/opsmgr/opsmgr@{digest}"
    # Servers and gateways run the operator's image: the operator is told which one.
    assert {"name": "OPSMGR_IMAGE", "value": pinned["image"]} in pinned["env"]


# --- CRDs ---

def _without_chart_annotations(crd: Document) -> Document:
    crd = {**crd, "metadata": {k: v for k, v in crd["metadata"].items() if k != "annotations"}}
    return crd


def test_chart_crds_are_exactly_the_generated_crds(helm: Helm) -> None:
    rendered = {d["metadata"]["name"]: _without_chart_annotations(d) for d in helm.template()
                if d["kind"] == "CustomResourceDefinition"}
    generated = {d["metadata"]["name"]: d for path in CRD_FILES for d in documents(path.read_text())}
    assert rendered == generated


def test_crds_are_kept_on_uninstall_unless_asked_otherwise(helm: Helm) -> None:
    for crd in (d for d in helm.template() if d["kind"] == "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"
    for crd in (d for d in helm.template("--set", "crds.keep=false") if d["kind"] == "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"]["annotations"]


def test_crds_can_be_left_to_kubectl(helm: Helm) -> None:
    assert "CustomResourceDefinition" not in kinds(helm.template("--set", "crds.enabled=false"))


def test_generated_install_files_are_current() -> None:
    # The chart's CRD templates, deploy/opsmgr.yaml and the argocd-cm patch are derived; drift fails here.
    from opsmgr.dev.cluster import testbin_dir  # noqa: PLC0415 (only this test needs the built helm)

    result = subprocess.run([sys.executable, str(MANIFESTS_TOOL), "--check", "--helm", str(testbin_dir() / "helm")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr + "\n(regenerate with `make manifests`)"


# --- values the schema refuses, with the message a user sees ---

@pytest.mark.parametrize(("args", "message"), [
    (["--set", "image.pullPolicy=Sometimes"],
     "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    (["--set", "operator.replicas=2"], "at '/operator': additional properties 'replicas' not allowed"),
    (["--set", "crds.enabled=yes"], "at '/crds/enabled': got string, want boolean"),
    (["--set", "managementGroup.name=Production_1"], "at '/managementGroup/name'"),
    (["--set", "webhook.timeoutSeconds=60"], "at '/webhook/timeoutSeconds': maximum: got 60, want 30"),
    (["--set", "image.digest=latest"], "at '/image/digest'"),
    (["--set", "operator.metricsPort=0"], "at '/operator/metricsPort': minimum: got 0, want 1"),
])
def test_a_wrong_value_fails_with_its_path_and_what_is_allowed(helm: Helm, args: list[str], message: str) -> None:
    result = helm.run("template", "opsmgr", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


# --- webhook, ManagementGroup, sync waves ---

def test_webhook_is_off_by_default_and_never_blocks_pods_when_on(helm: Helm) -> None:
    assert "MutatingWebhookConfiguration" not in kinds(helm.template())
    docs = helm.template("--set", "webhook.enabled=true")
    (webhook,) = find(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    expressions = {e["key"]: e for e in webhook["objectSelector"]["matchExpressions"]}
    assert expressions["opsmgr.io/inject-agent"] == {"key": "opsmgr.io/inject-agent", "operator": "In",
                                                     "values": ["true"]}
    assert expressions["app.kubernetes.io/managed-by"]["operator"] == "NotIn"
    service = webhook["clientConfig"]["service"]
    assert find(docs, "Service", service["name"])["metadata"]["namespace"] == service["namespace"]


def test_a_management_group_from_values(helm: Helm) -> None:
    assert "ManagementGroup" not in kinds(helm.template())
    docs = helm.template(values={"managementGroup": {"create": True, "name": "production",
                                                     "spec": {"servers": {"replicas": 2}, "approvalPolicy": "Review"}}})
    group = find(docs, "ManagementGroup", "production")
    assert group["apiVersion"] == "opsmgr.io/v1alpha1"
    assert group["metadata"]["namespace"] == "opsmgr-system"
    assert group["spec"] == {"servers": {"replicas": 2}, "approvalPolicy": "Review"}


def _wave(doc: Document) -> int:
    return int(doc["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])


def test_argo_cd_creates_crds_then_rights_then_the_operator_then_the_group(helm: Helm) -> None:
    docs = helm.template("--set", "managementGroup.create=true", "--set", "webhook.enabled=true")
    waves: dict[str, set[int]] = {}
    for doc in docs:
        waves.setdefault(doc["kind"], set()).add(_wave(doc))
    crds, rbac = waves["CustomResourceDefinition"], waves["ClusterRole"] | waves["ServiceAccount"]
    operator = waves["Deployment"] | waves["Service"] | waves["MutatingWebhookConfiguration"]
    assert max(crds) < min(rbac) <= max(rbac) < min(operator) <= max(operator) < min(waves["ManagementGroup"])
    assert waves["ClusterRoleBinding"] == waves["ClusterRole"]


def test_the_example_argo_cd_application_values_are_accepted(helm: Helm) -> None:
    application = yaml.safe_load((ROOT / "argocd" / "application.yaml").read_text())
    source = application["spec"]["source"]
    assert source["path"] == "charts/opsmgr"
    docs = helm.template(values=source["helm"]["valuesObject"], release=source["helm"]["releaseName"],
                         namespace=application["spec"]["destination"]["namespace"])
    assert find(docs, "ManagementGroup")["metadata"]["name"] == "production"


# --- least privilege ---

def _rules(docs: list[Document]) -> list[dict[str, Any]]:
    return [rule for doc in docs if doc["kind"] in {"ClusterRole", "Role"} for rule in doc["rules"]]


def test_operator_rights_name_every_resource_and_verb_and_include_no_escalation(helm: Helm) -> None:
    rules = _rules(helm.template())
    assert rules
    shipped = {doc["metadata"]["name"] for doc in helm.template() if doc["kind"] == "ClusterRole"}
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        assert not {"escalate", "impersonate"} & set(rule["verbs"]), rule
        assert "nonResourceURLs" not in rule, rule
        # bind only on the chart's own ClusterRoles, by name: the operator can grant nothing else cluster-wide.
        if "bind" in rule["verbs"]:
            assert rule["resources"] == ["clusterroles"] and set(rule["resourceNames"]) <= shipped, rule
    # Namespaced Roles it writes; cluster-wide only bindings to those named roles (node agents, enrollment).
    rbac = {resource for r in rules if "rbac.authorization.k8s.io" in r["apiGroups"] for resource in r["resources"]}
    assert rbac <= {"roles", "rolebindings", "clusterrolebindings", "clusterroles"}
    # Secrets only by name: listing or watching them would expose every Secret in the cluster.
    secrets = {verb for r in rules if "" in r["apiGroups"] and "secrets" in r["resources"] for verb in r["verbs"]}
    assert not secrets & {"list", "watch"}


def test_the_values_skaffold_sets_are_accepted(helm: Helm) -> None:
    (release,) = yaml.safe_load((ROOT / "skaffold.yaml").read_text())["deploy"]["helm"]["releases"]
    # What skaffold substitutes for a locally built image: a repository and a commit tag.
    substituted = {key: "registry.local/built" if key.endswith("repository") else "0a1b2c3"
                   for key in release["setValueTemplates"]}
    values = {**substituted, **release["setValues"]}
    args = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    docs = helm.template(*args, release=release["name"], namespace=release["namespace"])
    (container,) = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.local/built:0a1b2c3"
    assert find(docs, "ManagementGroup")["metadata"]["name"] == release["setValues"]["managementGroup.name"]
