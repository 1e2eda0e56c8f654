"""Gateway: relays agents outside the trust boundary to management servers, preserving their identity."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from opsmgr.api.common import (
    AGE_COLUMN,
    LIST_SET,
    MESSAGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    CustomResource,
    DnsLabel,
    Fqdn,
    LocalReference,
    ManagementGroupReference,
    Port,
    PrinterColumn,
    ResourceRequirements,
    immutable,
)
from opsmgr.api.conditions import ResourceStatus
from opsmgr.api.management_group import AGENT_PORT


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class GatewaySpec(ApiModel):
    """A gateway deployment: where agents outside the trust boundary connect."""

    management_group_ref: ManagementGroupReference = Field(
        json_schema_extra=immutable("spec.managementGroupRef", "delete the Gateway and create it in the new group"))
    """The ManagementGroup the gateway relays to. Immutable."""
    fqdn: Fqdn
    """Name agents use to reach the gateway; the CN and a SAN of its certificate."""
    replicas: int = Field(default=1, ge=1, le=16)
    """Number of gateway pods."""
    port: Port = AGENT_PORT
    """TCP port agents connect to."""
    service_type: ServiceType = ServiceType.LOAD_BALANCER
    """Type of the Service agents connect through; LoadBalancer reaches agents outside the cluster."""
    certificate_secret: LocalReference | None = None
    """A kubernetes.io/tls Secret with an imported certificate; the group CA issues one when unset."""
    primary_server: DnsLabel | None = None
    """Management server (pod name) the gateway relays to; the operator assigns one when unset."""
    failover_servers: list[DnsLabel] = Field(default_factory=list, max_length=8, json_schema_extra=LIST_SET)
    """Servers to fail over to, in order; the operator assigns them when empty."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU and memory of each gateway pod."""


class GatewayStatus(ResourceStatus):
    """What the operator observed about the gateway."""

    replicas: int = Field(default=0, ge=0)
    """Gateway pods that exist."""
    ready_replicas: int = Field(default=0, ge=0)
    """Gateway pods that accept agents."""
    endpoint: str | None = Field(default=None, max_length=512)
    """host:port agents connect to."""
    agents: int = Field(default=0, ge=0)
    """Agents relayed through the gateway now."""
    primary_server: DnsLabel | None = None
    """The primary server assigned to the gateway."""
    failover_servers: list[DnsLabel] = Field(default_factory=list, max_length=8)
    """The failover servers assigned to the gateway, in order."""
    certificate_not_after: datetime | None = None
    """When the gateway certificate expires."""


class Gateway(CustomResource):
    """A gateway that relays agents from outside the trust boundary to the group's management servers."""

    plural: ClassVar[str] = "gateways"
    short_names: ClassVar[tuple[str, ...]] = ("gw",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        READY_COLUMN,
        PrinterColumn("REPLICAS", ".status.readyReplicas", "integer", "Gateway pods ready."),
        AGE_COLUMN,
        PrinterColumn("AGENTS", ".status.agents", "integer", "Agents relayed now.", priority=1),
        MESSAGE_COLUMN,
    )

    kind: Literal["Gateway"] = "Gateway"
    spec: GatewaySpec
    status: GatewayStatus = Field(default_factory=GatewayStatus)
