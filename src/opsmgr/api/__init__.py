"""Pydantic models of every custom resource's spec and status: the single source of truth for the CRDs.

Parse what the API server or kopf hands over with `Agent.from_body(body)` (any kind the same way), write status
with `status.to_dict()`, and decide conditions with `opsmgr.api.conditions`.
"""

from opsmgr.api.agent import Agent, AgentSpec, AgentStatus
from opsmgr.api.agent_task import AgentTask, AgentTaskSpec, AgentTaskStatus
from opsmgr.api.common import API_VERSION, GROUP, VERSION, CustomResource
from opsmgr.api.conditions import Condition, ConditionStatus
from opsmgr.api.gateway import Gateway, GatewaySpec, GatewayStatus
from opsmgr.api.management_group import ManagementGroup, ManagementGroupSpec, ManagementGroupStatus
from opsmgr.api.management_pack import ManagementPack, ManagementPackSpec, ManagementPackStatus

RESOURCES: tuple[type[CustomResource], ...] = (ManagementGroup, Agent, Gateway, ManagementPack, AgentTask)
"""Every kind opsmgr defines, in the order their CRDs are printed."""

RESOURCES_BY_KIND: dict[str, type[CustomResource]] = {r.kind_name(): r for r in RESOURCES}

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "RESOURCES_BY_KIND",
    "VERSION",
    "Agent",
    "AgentSpec",
    "AgentStatus",
    "AgentTask",
    "AgentTaskSpec",
    "AgentTaskStatus",
    "Condition",
    "ConditionStatus",
    "CustomResource",
    "Gateway",
    "GatewaySpec",
    "GatewayStatus",
    "ManagementGroup",
    "ManagementGroupSpec",
    "ManagementGroupStatus",
    "ManagementPack",
    "ManagementPackSpec",
    "ManagementPackStatus",
]
