"""The operator as it ships: a subprocess `opsmgr operator` authenticated as its ServiceAccount, holding only the
ClusterRole of deploy/opsmgr.yaml (generated from the chart), against the session's real API server and
controller manager.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.local_operator import LOCAL_AGENT_IMAGE, LOCAL_IMAGE, SOURCE_TREE, start_operator
from opsmgr.dev.local_operator import RunningOperator as RunningOperator  # noqa: PLC0414 (shared with the tests)
from tests.integration.api.conftest import Kubectl

EXAMPLES = SOURCE_TREE / "examples"
TEST_IMAGE = LOCAL_IMAGE  # the local runtime runs the venv's `opsmgr` for it
TEST_AGENT_IMAGE = LOCAL_AGENT_IMAGE  # the runtime runs `opsmgr agent` for it


@pytest.fixture(scope="session")
def operator(kube_cluster: LocalCluster) -> Iterator[RunningOperator]:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-operator-"))
    running = start_operator(kube_cluster, directory)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kubectl(operator: RunningOperator, kube_cluster: LocalCluster, namespace: str) -> Kubectl:
    return Kubectl(kube_cluster, namespace)


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except subprocess.CalledProcessError as error:
            last = error.stderr
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s; last seen: {last!r}")


def get_or_none(kubectl: Kubectl, kind: str, name: str) -> dict[str, Any] | None:
    code, out = kubectl.run("get", kind, name, "-o", "json", check=False)
    if code != 0:
        return None
    found: dict[str, Any] = json.loads(out)
    return found


def condition(resource: dict[str, Any] | None, type: str) -> dict[str, Any] | None:
    for item in ((resource or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == type:
            found: dict[str, Any] = item
            return found
    return None
