"""The generated CRDs are accepted as they are (structural, within the CEL cost budget) and explain themselves."""

from __future__ import annotations

import json
import time

import pytest

from opsmgr.api import RESOURCES, CustomResource
from opsmgr.dev.cluster import LocalCluster


@pytest.mark.parametrize("resource", RESOURCES, ids=[r.kind_name() for r in RESOURCES])
def test_crd_is_established_with_no_schema_complaints(opsmgr_crds: LocalCluster,
                                                      resource: type[CustomResource]) -> None:
    stored = json.loads(opsmgr_crds.kubectl("get", "crd", resource.crd_name(), "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert "NonStructuralSchema" not in conditions


@pytest.mark.parametrize(("field", "says"), [
    ("agents.spec.queueLimitMB", "on-disk send queue"),
    ("managementgroups.spec.heartbeat.missedThreshold", "Missed heartbeats in a row"),
    ("managementpacks.spec.rules.performance.optimizedCollection.maximumSampleSeparation", "at least every"),
])
def test_kubectl_explain_shows_the_field_descriptions(opsmgr_crds: LocalCluster, field: str, says: str) -> None:
    # The API server publishes a new CRD's OpenAPI schema a little after Established: ask again for a while.
    deadline = time.monotonic() + 30
    while True:
        done = opsmgr_crds.kubectl("explain", field, check=False)
        output = " ".join(done.stdout.split())
        if says in output or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert says in output, done.stderr
