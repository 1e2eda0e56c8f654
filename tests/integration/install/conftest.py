"""The chart, helm and the generated install files, as the install tests use them."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsmgr.dev.cluster import LocalCluster, testbin_dir

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "opsmgr"
CRDS = ROOT / "crds"
DEPLOY = ROOT / "deploy" / "opsmgr.yaml"
MANIFESTS_TOOL = ROOT / "tools" / "manifests.py"
PLAIN_NAMESPACE = "opsmgr-system"  # what deploy/opsmgr.yaml installs into

Document = dict[str, Any]


def documents(text: str) -> list[Document]:
    """The objects of a YAML stream, without the empty documents helm leaves between templates."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[Document], kind: str, name: str | None = None) -> Document:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def kinds(docs: list[Document]) -> list[str]:
    return sorted(d["kind"] for d in docs)


@dataclass(frozen=True)
class Helm:
    """helm with its own config, cache and data directories, so tests never read or write the user's."""

    binary: Path
    home: Path

    def run(self, *args: str, check: bool = True, kubeconfig: Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            "HOME": str(self.home), "PATH": "/usr/bin:/bin",
            "HELM_CONFIG_HOME": str(self.home / "config"), "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        command = [str(self.binary), *args]
        if kubeconfig is not None:
            command += ["--kubeconfig", str(kubeconfig)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, input=input, timeout=300,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template(self, *args: str, values: Mapping[str, Any] | None = None, release: str = "opsmgr",
                 namespace: str = PLAIN_NAMESPACE) -> list[Document]:
        """The chart rendered with `--set`-style args and/or a values document."""
        extra = ["--values", "-"] if values is not None else []
        result = self.run("template", release, str(CHART), "--namespace", namespace, *extra, *args,
                          input=json.dumps(values) if values is not None else None)
        return documents(result.stdout)


@pytest.fixture(scope="session")
def helm() -> Iterator[Helm]:
    with tempfile.TemporaryDirectory(prefix="opsmgr-helm-") as home:
        yield Helm(testbin_dir() / "helm", Path(home))


@pytest.fixture(scope="session")
def plain_crds(kube_cluster: LocalCluster) -> LocalCluster:
    """The cluster with crds/ applied the way the plain install path says (`kubectl apply -f crds/`)."""
    # Exactly the documented command; it also takes over CRDs other test modules applied server-side.
    kube_cluster.kubectl("apply", "-f", str(CRDS))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "-l",
                         "app.kubernetes.io/part-of=opsmgr")
    return kube_cluster
