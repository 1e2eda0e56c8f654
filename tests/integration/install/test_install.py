"""The install paths against the real API server: server-side dry runs, then real installs (kubectl, Helm), and
the operator the chart deploys running under the local runtime and reconciling the chart's ManagementGroup."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from opsmgr.dev.cluster import ClusterError, LocalCluster
from opsmgr.dev.postgres import free_port
from opsmgr.dev.runtime import RuntimeThread
from tests.integration.dev.test_runtime import eventually
from tests.integration.install.conftest import CHART, CRDS, DEPLOY, PLAIN_NAMESPACE, Helm, documents
from tests.unit.install.argocd import assess

CRD_NAMES = sorted(doc["metadata"]["name"] for path in CRDS.glob("*.opsmgr.io.yaml")
                   for doc in documents(path.read_text()))


def _dry_run(cluster: LocalCluster, docs: list[dict[str, Any]]) -> str:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    return result.stdout


def test_the_whole_chart_passes_a_server_side_dry_run(plain_crds: LocalCluster, helm: Helm, namespace: str) -> None:
    # Everything on: CRDs, webhook, a ManagementGroup from values (checked against the real CRD schema and CEL).
    docs = helm.template("--set", "webhook.enabled=true", "--set", "managementGroup.create=true",
                         "--set-json", 'managementGroup.spec={"servers": {"replicas": 2}, "approvalPolicy": "Review"}',
                         release=namespace, namespace=namespace)
    out = _dry_run(plain_crds, docs)
    assert out.count("(server dry run)") == len(docs), out


def test_a_management_group_spec_the_crd_refuses_fails_the_dry_run_with_the_field(
        plain_crds: LocalCluster, helm: Helm, namespace: str) -> None:
    docs = helm.template("--set", "managementGroup.create=true", "--set", "managementGroup.spec.servers.replicas=0",
                         "--set", "crds.enabled=false", release=namespace, namespace=namespace)
    with pytest.raises(ClusterError, match=r"spec\.servers\.replicas"):
        _dry_run(plain_crds, docs)


def test_plain_path_kubectl_apply_creates_the_operator(plain_crds: LocalCluster) -> None:
    # README: `kubectl apply -f crds/` (the fixture) then `kubectl apply -f deploy/opsmgr.yaml`.
    docs = documents(DEPLOY.read_text())
    namespace_doc, *rest = docs
    assert namespace_doc == {**namespace_doc, "kind": "Namespace", "metadata": {**namespace_doc["metadata"],
                                                                              "name": PLAIN_NAMESPACE}}
    try:
        # A dry run cannot see a namespace it did not create, so the Namespace is applied first.
        plain_crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace_doc))
        assert _dry_run(plain_crds, rest).count("(server dry run)") == len(rest)
        out = plain_crds.kubectl("apply", "-f", str(DEPLOY)).stdout
        assert len(out.strip().splitlines()) == len(docs)
        # The ReplicaSet can only create the Pod if it meets the namespace's restricted Pod Security Standard.
        eventually(lambda: _pods(plain_crds, PLAIN_NAMESPACE), "the operator Pod to be created", 60)
    finally:
        plain_crds.kubectl("delete", "-f", str(DEPLOY), "--ignore-not-found", "--wait=false")


def _pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator", "-o", "json")
    pods: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return pods


def test_helm_refuses_a_wrong_value_and_creates_nothing(plain_crds: LocalCluster, helm: Helm,
                                                       namespace: str) -> None:
    result = helm.run("install", namespace, str(CHART), "-n", namespace, "--set", "crds.enabled=false",
                      "--set", "operator.resources.requests.memory=lots", check=False, kubeconfig=plain_crds.kubeconfig)
    assert result.returncode != 0
    assert "at '/operator/resources/requests/memory'" in result.stderr
    listed = helm.run("list", "-n", namespace, "-q", kubeconfig=plain_crds.kubeconfig)
    assert listed.stdout.strip() == ""
    assert plain_crds.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_helm_uninstall_keeps_the_crds_and_every_opsmgr_object(plain_crds: LocalCluster, helm: Helm,
                                                              namespace: str) -> None:
    # Moving from `kubectl apply -f crds/` to chart-managed CRDs: Helm adopts them once they carry its ownership.
    for crd in CRD_NAMES:
        plain_crds.kubectl("annotate", "--overwrite", "crd", crd, f"meta.helm.sh/release-name={namespace}",
                           f"meta.helm.sh/release-namespace={namespace}")
        plain_crds.kubectl("label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
    helm.run("install", namespace, str(CHART), "-n", namespace, "--set", "managementGroup.create=true",
             kubeconfig=plain_crds.kubeconfig)
    assert plain_crds.kubectl("get", "managementgroup", "default", "-n", namespace).returncode == 0
    # A group created outside the release, as users do: it must survive the uninstall because the CRD does.
    plain_crds.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump({
        "apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup", "metadata": {"name": "production"}}))
    out = helm.run("uninstall", namespace, "-n", namespace, kubeconfig=plain_crds.kubeconfig)
    assert "kept due to the resource policy" in out.stdout + out.stderr
    for crd in CRD_NAMES:
        assert plain_crds.kubectl("get", "crd", crd).returncode == 0
    assert plain_crds.kubectl("get", "managementgroup", "production", "-n", namespace).returncode == 0


def _group(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "managementgroup", name, "-n", namespace, "-o", "json")
    group: dict[str, Any] = json.loads(out.stdout)
    return group


@pytest.mark.timeout(540)  # helm --wait (up to 3 min), then the group's databases and server (up to 4 min)
def test_helm_install_runs_the_operator_and_it_brings_the_charts_group_to_ready(
        plain_crds: LocalCluster, helm: Helm, namespace: str, local_runtime: RuntimeThread) -> None:
    # The chart as a user installs it, with the operator confined to this namespace (the session may run others)
    # on ports of its own; the local runtime runs its Pod and everything the operator creates.
    installed = helm.run(
        "install", namespace, str(CHART), "-n", namespace, "--set", "crds.enabled=false",
        "--set", f"operator.namespaces={{{namespace}}}", "--set", f"operator.livenessPort={free_port()}",
        "--set", f"operator.metricsPort={free_port()}", "--set", "managementGroup.create=true",
        "--set", "managementGroup.name=production", "--set-json", 'managementGroup.spec={"servers": {"replicas": 1}}',
        "--wait", "--timeout=3m", kubeconfig=plain_crds.kubeconfig)
    # The notes tell the user what to run next, with this release's names.
    notes = " ".join(installed.stdout.split())
    assert f"kubectl -n {namespace} rollout status deployment/{namespace}-opsmgr-operator" in notes
    assert f"kubectl -n {namespace} get managementgroup production -w" in notes
    assert "kubectl apply -f crds/" in notes  # CRDs were left to kubectl
    (pod,) = _pods(plain_crds, namespace)
    assert pod["status"]["phase"] == "Running"
    # What Argo CD would show on the way: Progressing while the group comes up, never Degraded, then Healthy.
    seen: list[tuple[str, str]] = []

    def healthy() -> bool:
        seen.append(assess("ManagementGroup", _group(plain_crds, namespace, "production")))
        assert seen[-1][0] in {"Progressing", "Healthy"}, seen
        return seen[-1][0] == "Healthy"

    eventually(healthy, "the chart's ManagementGroup to be Ready", 240)
    ready = {c["type"]: c["status"] for c in _group(plain_crds, namespace, "production")["status"]["conditions"]}
    assert ready["Ready"] == "True"
