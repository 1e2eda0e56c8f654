"""`kubectl get` shows each kind's console columns, filled from status the way the operator writes it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsmgr.api import AgentStatus, AgentTaskStatus, GatewayStatus, ManagementGroupStatus, ManagementPackStatus
from opsmgr.api.agent import Approval, Connection, Health, HeartbeatState, QueueStatus
from opsmgr.api.agent_task import TaskPhase
from opsmgr.api.conditions import READY, Condition
from opsmgr.api.management_group import AgentCounts, ServerCounts
from tests.integration.api.conftest import Kubectl
from tests.unit.api.cases import EXAMPLES

NOW = datetime.now(UTC).replace(microsecond=0)
READY_TRUE = [Condition.of(READY, True, "AllReady", "Every part is ready.", generation=1, now=NOW)]


@dataclass(frozen=True)
class Console:
    """What `kubectl get <plural>` shows once the operator wrote `status`."""

    example: str
    plural: str
    status: dict[str, Any]
    header: list[str]
    cells: list[str]
    """The row after NAME; "*" for a cell that holds an age."""


CONSOLES = [
    Console("agent-host", "agents",
            AgentStatus(approval=Approval.APPROVED, connection=Connection.CONNECTED, health=Health.WARNING,
                        heartbeat=HeartbeatState.OK, last_heartbeat_time=NOW - timedelta(seconds=30),
                        server="production-server-0", queue=QueueStatus(percent_used=12, evictions=2),
                        conditions=READY_TRUE).to_dict(),
            ["NAME", "HEALTH", "HEARTBEAT", "CONNECTION", "LAST-HEARTBEAT", "SERVER", "QUEUE", "AGE"],
            ["Warning", "OK", "Connected", "*", "production-server-0", "12", "*"]),
    Console("management-group", "managementgroups",
            ManagementGroupStatus(servers=ServerCounts(desired=2, ready=2), agents=AgentCounts(total=3, healthy=3),
                                  conditions=READY_TRUE).to_dict(),
            ["NAME", "READY", "SERVERS", "AGENTS", "AGE"], ["True", "2", "3", "*"]),
    Console("gateway", "gateways", GatewayStatus(replicas=2, ready_replicas=2, conditions=READY_TRUE).to_dict(),
            ["NAME", "READY", "REPLICAS", "AGE"], ["True", "2", "*"]),
    Console("management-pack-linux", "managementpacks",
            ManagementPackStatus(rules=4, monitors=2, tasks=2, conditions=READY_TRUE).to_dict(),
            ["NAME", "VERSION", "RULES", "MONITORS", "TASKS"], ["1.0.0.0", "4", "2", "2"]),
    Console("agent-task", "agenttasks",
            AgentTaskStatus(phase=TaskPhase.SUCCEEDED, exit_code=0, output="", start_time=NOW,
                            completion_time=NOW).to_dict(),
            ["NAME", "PHASE", "AGENT", "EXIT", "AGE"], ["Succeeded", "db01-example-com", "0", "*"]),
]


def table(output: str) -> list[list[str]]:
    """kubectl's table as rows of cells (cells never contain spaces in these tests)."""
    return [line.split() for line in output.strip().splitlines()]


@pytest.mark.parametrize("console", CONSOLES, ids=[c.plural for c in CONSOLES])
def test_kubectl_get_shows_the_console_columns(kubectl: Kubectl, console: Console) -> None:
    name = EXAMPLES[console.example]["metadata"]["name"]
    kubectl.create(EXAMPLES[console.example])
    kubectl.patch_status(console.plural, name, console.status)
    _, output = kubectl.run("get", console.plural)
    rows = table(output)
    assert rows[0] == console.header
    assert rows[1][0] == name
    shown = ["*" if expected == "*" else cell for expected, cell in zip(console.cells, rows[1][1:], strict=True)]
    assert shown == console.cells


def test_wide_output_adds_the_ready_message(kubectl: Kubectl) -> None:
    kubectl.create(EXAMPLES["management-group"])
    kubectl.patch_status("managementgroups", "production", ManagementGroupStatus(conditions=READY_TRUE).to_dict())
    _, output = kubectl.run("get", "managementgroups", "-o", "wide")
    assert table(output)[0][-1] == "MESSAGE"
    assert output.rstrip().endswith("Every part is ready.")


def test_short_names_and_the_opsmgr_category_reach_every_kind(kubectl: Kubectl) -> None:
    for example in EXAMPLES.values():
        kubectl.create(example)
    _, output = kubectl.run("get", "mg,agt,gw,mp,atask", "-o", "name")
    assert len(output.split()) == len(EXAMPLES)
    _, output = kubectl.run("get", "opsmgr", "-o", "name")
    assert sorted(output.split()) == sorted(
        f"{doc['kind'].lower()}.opsmgr.io/{doc['metadata']['name']}" for doc in EXAMPLES.values())
