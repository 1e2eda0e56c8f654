"""Pydantic models of every custom resource's spec and status: the single source of truth for the CRDs.

Parse what the API server or kopf hands over with `Agent.from_body(body)` (any kind the same way), write status
with `status.to_dict()`, and decide conditions with `opsmgr.api.conditions`.

The names below are imported on first use (PEP 562), not when the package is: the agent imports
`opsmgr.api.management_pack` alone, and building the Agent, Gateway and AgentTask models it never uses cost it
about 1 MB of its 50 MB budget (issue 9).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsmgr.api.agent import Agent, AgentSpec, AgentStatus
    from opsmgr.api.agent_task import AgentTask, AgentTaskSpec, AgentTaskStatus
    from opsmgr.api.common import API_VERSION, GROUP, VERSION, CustomResource
    from opsmgr.api.conditions import Condition, ConditionStatus
    from opsmgr.api.gateway import Gateway, GatewaySpec, GatewayStatus
    from opsmgr.api.management_group import ManagementGroup, ManagementGroupSpec, ManagementGroupStatus
    from opsmgr.api.management_pack import ManagementPack, ManagementPackSpec, ManagementPackStatus

    RESOURCES: tuple[type[CustomResource], ...]
    """Every kind opsmgr defines, in the order their CRDs are printed."""
    RESOURCES_BY_KIND: dict[str, type[CustomResource]]

_MODULE_OF: dict[str, str] = {
    **dict.fromkeys(("Agent", "AgentSpec", "AgentStatus"), "agent"),
    **dict.fromkeys(("AgentTask", "AgentTaskSpec", "AgentTaskStatus"), "agent_task"),
    **dict.fromkeys(("API_VERSION", "GROUP", "VERSION", "CustomResource"), "common"),
    **dict.fromkeys(("Condition", "ConditionStatus"), "conditions"),
    **dict.fromkeys(("Gateway", "GatewaySpec", "GatewayStatus"), "gateway"),
    **dict.fromkeys(("ManagementGroup", "ManagementGroupSpec", "ManagementGroupStatus"), "management_group"),
    **dict.fromkeys(("ManagementPack", "ManagementPackSpec", "ManagementPackStatus"), "management_pack"),
}
# Every kind, in the order their CRDs are printed.
_RESOURCE_KINDS = (("management_group", "ManagementGroup"), ("agent", "Agent"), ("gateway", "Gateway"),
                   ("management_pack", "ManagementPack"), ("agent_task", "AgentTask"))


def _load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = _load(_MODULE_OF[name], name)
    elif name == "RESOURCES":
        value = tuple(_load(module, kind) for module, kind in _RESOURCE_KINDS)
    elif name == "RESOURCES_BY_KIND":
        value = {r.kind_name(): r for r in __getattr__("RESOURCES")}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups find it without coming here
    return value


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
