"""Every example applies to the real API server and reads back with the defaults the models promise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opsmgr.api import Agent, AgentStatus, ManagementGroup
from opsmgr.api.agent import Approval, Health
from opsmgr.api.management_group import ManagementGroupSpec
from tests.integration.api.conftest import Kubectl
from tests.unit.api.cases import EXAMPLES, model_of


def without_empty(value: Any) -> Any:
    """The value with empty lists and maps left out: the API server stores an unset list as no list at all."""
    if isinstance(value, dict):
        kept = {key: without_empty(item) for key, item in value.items()}
        return {key: item for key, item in kept.items() if item not in ([], {})}
    if isinstance(value, list):
        return [without_empty(item) for item in value]
    return value


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_reads_back_with_the_defaults_the_model_fills_in(kubectl: Kubectl, name: str) -> None:
    document = EXAMPLES[name]
    model = model_of(document)
    stored = kubectl.create(document)
    # The model's idea of the object (example + pydantic defaults) is what the API server stored.
    expected = model.model_validate(document).to_dict()["spec"]
    assert without_empty(stored["spec"]) == without_empty(expected)
    assert model.from_body(stored).to_dict()["spec"] == model.model_validate(document).to_dict()["spec"]
    assert stored["apiVersion"] == "opsmgr.io/v1alpha1" and stored["kind"] == document["kind"]


def test_management_group_without_a_spec_gets_every_operations_manager_default(kubectl: Kubectl) -> None:
    stored = kubectl.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup",
                             "metadata": {"name": "defaults"}})
    spec = stored["spec"]
    assert spec["heartbeat"] == {"intervalSeconds": 60, "missedThreshold": 4, "statusUpdateSeconds": 180}
    assert spec["agentPort"] == 5723
    assert spec["retention"] == {"operationalDays": 7, "warehouseRawDays": 10, "warehouseAggregatedDays": 400,
                                 "alertDays": 400}
    assert spec["database"] == {"embedded": {"storageSize": "10Gi"}}
    assert spec["certificates"] == {"authority": {"generated": {"validity": "87600h"}}, "validity": "8760h",
                                    "renewBefore": "2920h"}
    assert spec["approvalPolicy"] == "Review"
    assert ManagementGroup.from_body(stored).spec == ManagementGroupSpec()


def test_agent_defaults_queue_limit_to_100_mb(kubectl: Kubectl) -> None:
    stored = kubectl.create(EXAMPLES["agent-node"])
    assert stored["spec"]["queueLimitMB"] == 100


def test_status_is_written_through_the_status_subresource_only(kubectl: Kubectl) -> None:
    kubectl.create(EXAMPLES["agent-node"])
    code, output = kubectl.run("replace", "-f", "-", input=json.dumps({**EXAMPLES["agent-node"],
                                                                       "status": {"health": "Critical"}}))
    assert code == 0, output
    assert "status" not in kubectl.get("agent", "worker-1"), "an update of the object must not change its status"
    kubectl.patch_status("agent", "worker-1", AgentStatus(health=Health.CRITICAL).to_dict())
    stored = Agent.from_body(kubectl.get("agent", "worker-1"))
    assert (stored.status.health, stored.status.approval) == (Health.CRITICAL, Approval.PENDING)
