"""The Go-built control plane is a real Kubernetes: controllers run, ownership cascades, namespaces go away."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from opsmgr.dev.cluster import LocalCluster

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.opsmgr.io}
spec:
  group: test.opsmgr.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer, minimum: 1}}}
"""


def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"within {timeout:.0f} s: {what}")


def names(local: LocalCluster, kind: str, namespace: str) -> list[str]:
    out = local.kubectl("get", kind, "-n", namespace, "-o", "json").stdout
    return [item["metadata"]["name"] for item in json.loads(out)["items"]]


def test_kube_apiserver_reports_the_version_it_was_built_as(kube_cluster: LocalCluster) -> None:
    info = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == "v1.36.3"


def test_deployment_owned_by_custom_object_is_garbage_collected_with_it(kube_cluster: LocalCluster,
                                                                         namespace: str) -> None:
    kube_cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kube_cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.test.opsmgr.io", "--timeout=60s")
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                         input="{apiVersion: test.opsmgr.io/v1, kind: Widget, metadata: {name: w1}, spec: {size: 2}}")
    owner_uid = kube_cluster.kubectl("get", "widget", "w1", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "ownerReferences": [
            {"apiVersion": "test.opsmgr.io/v1", "kind": "Widget", "name": "w1", "uid": owner_uid}]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}}},
    }
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment))

    eventually(lambda: len(names(kube_cluster, "replicasets", namespace)) == 1, "the deployment made a ReplicaSet")
    eventually(lambda: len(names(kube_cluster, "pods", namespace)) == 2, "the ReplicaSet made 2 Pods")
    phases = kube_cluster.kubectl("get", "pods", "-n", namespace, "-o", "jsonpath={.items[*].status.phase}").stdout
    assert phases.split() == ["Pending", "Pending"]  # no kubelet, no scheduler: nothing runs them yet

    kube_cluster.kubectl("delete", "widget", "w1", "-n", namespace)
    eventually(lambda: not names(kube_cluster, "deployments", namespace), "the Deployment was garbage-collected")
    eventually(lambda: not names(kube_cluster, "replicasets", namespace), "the ReplicaSet was garbage-collected")
    eventually(lambda: not names(kube_cluster, "pods", namespace), "the Pods were garbage-collected")


def test_deleted_namespace_disappears(kube_cluster: LocalCluster, namespace: str) -> None:
    kube_cluster.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=a=b")
    kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    eventually(lambda: kube_cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0,
               f"namespace {namespace} was removed by the namespace controller")


def test_cluster_commands_work_from_a_shell(tmp_path: Path) -> None:
    opsmgr = Path(sys.executable).parent / "opsmgr"
    directory = tmp_path / "cluster"
    script = (f'"{opsmgr}" dev cluster up --dir "{directory}" && '
              f'eval "$("{opsmgr}" dev cluster env --dir "{directory}")" && kubectl get ns && '
              f'"{opsmgr}" dev cluster down --dir "{directory}"')
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=180, check=False)
    try:
        assert result.returncode == 0, result.stderr
        assert "kube-system" in result.stdout
        assert "stopped kube-controller-manager, kube-apiserver, etcd" in result.stdout
    finally:
        subprocess.run([str(opsmgr), "dev", "cluster", "down", "--dir", str(directory)], check=False)


def test_env_without_a_running_cluster_says_how_to_start_one(tmp_path: Path) -> None:
    opsmgr = Path(sys.executable).parent / "opsmgr"
    result = subprocess.run([str(opsmgr), "dev", "cluster", "env", "--dir", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "opsmgr dev cluster up" in result.stderr
