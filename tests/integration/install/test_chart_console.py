"""The chart's optional console: off by default; on, a Deployment and Service serving HTTPS from Secrets, with the
console's read-only rights, TokenReview/SubjectAccessReview, and a ClusterRole to give people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opsmgr.console.config import parse_config
from tests.integration.install.conftest import CHART, Document, Helm, find, kinds

ENABLED = {"console": {"enabled": True, "tls": {"secretName": "console-tls"},
                       "databases": {"operational": {"secretName": "ops-app"},
                                     "warehouse": {"secretName": "wh-app", "key": "dsn"}}}}


def _console(docs: list[Document], kind: str) -> Document:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith("-console"))


def test_the_console_is_off_by_default(helm: Helm) -> None:
    docs = helm.template()
    assert not [d for d in docs if d["metadata"]["name"].endswith("-console")]
    assert kinds(docs).count("Deployment") == 1


def test_the_console_serves_https_from_its_secrets_as_non_root(helm: Helm) -> None:
    docs = helm.template(values=ENABLED)
    deployment = _console(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["opsmgr", "console"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tls": "console-tls", "operational": "ops-app", "warehouse": "wh-app"}
    service = _console(docs, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    assert pod["serviceAccountName"] == _console(docs, "ServiceAccount")["metadata"]["name"]
    # The operator's own Deployment still selects only its pods.
    operator = next(d for d in docs if d["kind"] == "Deployment" and d is not deployment)
    assert operator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_the_rendered_configuration_is_one_the_console_accepts(helm: Helm, tmp_path: Path) -> None:
    config_map = _console(helm.template(values=ENABLED), "ConfigMap")
    document: dict[str, Any] = yaml.safe_load(config_map["data"]["console.yaml"])
    # The files the pod mounts, laid out under tmp_path.
    for section, key in (("tls", "certificate"), ("tls", "key")):
        path = tmp_path / Path(document[section][key]).relative_to("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("pem")
        document[section][key] = str(path)
    for name, key in (("operational_dsn_file", "uri"), ("warehouse_dsn_file", "dsn")):
        assert document["databases"][name].endswith(f"/{key}")
        path = tmp_path / name
        path.write_text("postgresql://app@db/app")
        document["databases"][name] = str(path)
    config = parse_config(document, Path("console.yaml"))
    assert config.kubernetes.namespace == "opsmgr-system"
    assert config.kubernetes.kubeconfig is None  # in-cluster


def test_the_console_reads_with_its_own_rights_and_people_get_a_role_to_change(helm: Helm) -> None:
    docs = helm.template(values=ENABLED)
    role = _console(docs, "Role")
    assert role["rules"] == [{"apiGroups": ["opsmgr.io"], "resources": ["agents", "managementpacks"],
                              "verbs": ["get", "list", "watch"]}]
    delegator = find(docs, "ClusterRoleBinding", role["metadata"]["name"] + "-auth-delegator")
    assert delegator["roleRef"]["name"] == "system:auth-delegator"
    people = find(docs, "ClusterRole", role["metadata"]["name"] + "-operator")
    assert {"apiGroups": ["opsmgr.io"], "resources": ["alerts"], "verbs": ["update"]} in people["rules"]


@pytest.mark.parametrize(("missing", "message"), [
    ("tls", "console.tls.secretName must name a kubernetes.io/tls Secret"),
    ("databases", "console.databases.operational.secretName must name"),
])
def test_enabling_the_console_without_its_secrets_says_which(helm: Helm, missing: str, message: str) -> None:
    values = {"console": {k: v for k, v in ENABLED["console"].items() if k != missing}}
    result = helm.run("template", "opsmgr", str(CHART), "--values", "-", check=False, input=yaml.safe_dump(values))
    assert result.returncode != 0
    assert message in result.stderr


def test_every_console_object_has_an_argo_cd_sync_wave(helm: Helm) -> None:
    docs = [d for d in helm.template(values=ENABLED) if "console" in d["metadata"]["name"]]
    assert len(docs) == 8
    waves = {d["kind"]: d["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] for d in docs}
    assert waves["Role"] == "-2" and waves["Deployment"] == "-1" and waves["Service"] == "-1"
