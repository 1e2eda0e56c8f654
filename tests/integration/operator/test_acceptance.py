"""Acceptance: the example group reaches Ready with its servers running as Pods (through the local runtime) on a
migrated embedded PostgreSQL, reconciled by the shipped operator.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.api.conftest import Kubectl
from tests.integration.operator.conftest import condition, eventually, example, get_or_none


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_example_group_reaches_ready_with_servers_running_as_pods(kubectl: Kubectl, local_runtime: Any) -> None:
    group = example("management-group.yaml")
    # The local runtime shares one network namespace: servers bind 0.0.0.0:5723, so one replica at a time here.
    group["spec"]["servers"]["replicas"] = 1
    kubectl.create(group)
    migrated = eventually(lambda: condition(get_or_none(kubectl, "managementgroup", "production"),
                                            "DatabasesReady") or {}, timeout=180, what="DatabasesReady decided")
    eventually(lambda: (condition(get_or_none(kubectl, "managementgroup", "production"), "DatabasesReady") or {})
               .get("status") == "True", timeout=180, what="databases migrated")
    assert migrated
    ready = eventually(lambda: (condition(get_or_none(kubectl, "managementgroup", "production"), "Ready") or {})
                       .get("status") == "True", timeout=180, what="the group Ready")
    assert ready
    pod = get_or_none(kubectl, "pod", "production-server-0")
    assert pod is not None and pod["status"]["phase"] == "Running"
    status = get_or_none(kubectl, "managementgroup", "production")["status"]  # type: ignore[index]
    assert status["servers"] == {"desired": 1, "ready": 1}
