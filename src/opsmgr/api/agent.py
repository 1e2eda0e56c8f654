"""Agent: one monitored computer (a node, a pod through its sidecar, or a host) and what is known about it.

Status keeps separate facts, never one mixed field: approval, connection, health, heartbeat and maintenance
answer different questions and change for different reasons.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from opsmgr.api.common import (
    AGE_COLUMN,
    LIST_SET,
    MESSAGE_COLUMN,
    TEXT_MAX,
    ApiModel,
    CelRule,
    CustomResource,
    DnsLabel,
    Fqdn,
    ManagementGroupReference,
    Port,
    PrinterColumn,
    immutable,
)
from opsmgr.api.conditions import ResourceStatus
from opsmgr.api.management_group import HeartbeatSpec

QUEUE_LIMIT_MB = 100
# "Send Queue % Used" thresholds from Operations Manager.
QUEUE_WARNING_PERCENT = 50
QUEUE_CRITICAL_PERCENT = 60


class Placement(StrEnum):
    NODE = "Node"
    SIDECAR = "Sidecar"
    HOST = "Host"


class MaintenanceReason(StrEnum):
    PLANNED_OTHER = "PlannedOther"
    UNPLANNED_OTHER = "UnplannedOther"
    PLANNED_HARDWARE_MAINTENANCE = "PlannedHardwareMaintenance"
    UNPLANNED_HARDWARE_MAINTENANCE = "UnplannedHardwareMaintenance"
    PLANNED_OPERATING_SYSTEM_RECONFIGURATION = "PlannedOperatingSystemReconfiguration"
    UNPLANNED_OPERATING_SYSTEM_RECONFIGURATION = "UnplannedOperatingSystemReconfiguration"
    PLANNED_APPLICATION_MAINTENANCE = "PlannedApplicationMaintenance"
    UNPLANNED_APPLICATION_MAINTENANCE = "UnplannedApplicationMaintenance"
    APPLICATION_INSTALLATION = "ApplicationInstallation"
    SECURITY_ISSUE = "SecurityIssue"
    LOSS_OF_NETWORK_CONNECTIVITY = "LossOfNetworkConnectivity"


class MaintenanceWindow(ApiModel):
    """While the window is open the health service watcher and alerting are silent for this agent."""

    start: AwareDatetime | None = None
    """When maintenance begins (RFC 3339); immediately when unset."""
    end: AwareDatetime
    """When maintenance ends (RFC 3339)."""
    reason: MaintenanceReason = MaintenanceReason.PLANNED_OTHER
    """Why the computer is in maintenance, as in Operations Manager."""
    comment: str | None = Field(default=None, max_length=TEXT_MAX)
    """A note for the people who see the agent in maintenance."""

    cel_rules = (
        CelRule(
            "!has(self.start) || self.start < self.end",
            "spec.maintenance.end must be later than spec.maintenance.start: move end after start or drop start "
            "to begin now",
            check=lambda m: m.start is None or m.start < m.end,
            field_path=".end",
        ),
    )

    def is_open(self, now: AwareDatetime) -> bool:
        """Whether the window covers this moment."""
        return (self.start is None or self.start <= now) and now < self.end


class HeartbeatOverride(ApiModel):
    """This agent's heartbeat settings where they differ from its group's."""

    interval_seconds: int | None = Field(default=None, ge=10, le=3600)
    """Seconds between heartbeats; the group's interval when unset."""
    missed_threshold: int | None = Field(default=None, ge=1, le=100)
    """Missed heartbeats before "Health Service Heartbeat Failure"; the group's threshold when unset."""


class HostProbe(ApiModel):
    """How the server checks a silent host: a TCP connect, raising "Failed to Connect to Computer" on failure."""

    port: Port
    """TCP port that answers while the computer is up, e.g. 22."""
    address: Fqdn | None = None
    """Host name or address to connect to; spec.fqdn when unset."""
    timeout_seconds: int = Field(default=5, ge=1, le=60)
    """Seconds to wait for the connection."""


class AgentSpec(ApiModel):
    """One monitored computer: which group it reports to, who it is, and where it runs."""

    management_group_ref: ManagementGroupReference = Field(
        json_schema_extra=immutable("spec.managementGroupRef", "delete the Agent and create it in the new group"))
    """The ManagementGroup the agent reports to. Immutable."""
    fqdn: Fqdn = Field(json_schema_extra=immutable(
        "spec.fqdn", "it is the agent certificate's CN; delete the Agent and create one for the new name"))
    """Fully qualified domain name of the computer; the CN of the agent's certificate. Immutable."""
    placement: Placement = Field(json_schema_extra=immutable(
        "spec.placement", "delete the Agent and create one with the new placement"))
    """Node (a DaemonSet pod per node), Sidecar (in an application pod) or Host (a VM or machine). Immutable."""
    primary_server: DnsLabel | None = None
    """Management server (pod name) the agent reports to; the operator assigns one when unset."""
    failover_servers: list[DnsLabel] = Field(default_factory=list, max_length=8, json_schema_extra=LIST_SET)
    """Servers to fail over to, in order; the operator assigns them when empty."""
    maintenance: MaintenanceWindow | None = None
    """A maintenance window: no heartbeat alerts and no alerting while it is open."""
    heartbeat: HeartbeatOverride | None = None
    """Heartbeat settings that override the group's."""
    probe: HostProbe | None = None
    """TCP probe for a Host agent whose heartbeats stop; pods are judged by their Pod's phase instead."""
    queue_limit_mb: int = Field(default=QUEUE_LIMIT_MB, ge=5, le=1500, alias="queueLimitMB")
    """Size of the agent's on-disk send queue in MB; when full, the oldest lowest-priority data is evicted."""

    def heartbeat_settings(self, group: HeartbeatSpec) -> HeartbeatSpec:
        """The heartbeat interval and threshold this agent follows: its overrides, else its group's."""
        override = self.heartbeat or HeartbeatOverride()
        return HeartbeatSpec(interval_seconds=override.interval_seconds or group.interval_seconds,
                             missed_threshold=override.missed_threshold or group.missed_threshold)

    def in_maintenance(self, now: AwareDatetime) -> bool:
        """Whether a maintenance window is open at this moment."""
        return self.maintenance is not None and self.maintenance.is_open(now)

    cel_rules = (
        CelRule(
            "!has(self.probe) || self.placement == 'Host'",
            "spec.probe applies only to placement Host (pods are checked through their Pod's phase): remove "
            "spec.probe",
            check=lambda s: s.probe is None or s.placement is Placement.HOST,
            field_path=".probe",
        ),
    )


class Approval(StrEnum):
    PENDING = "Pending"
    APPROVED = "Approved"
    REJECTED = "Rejected"


class Connection(StrEnum):
    NEVER_CONNECTED = "NeverConnected"
    CONNECTED = "Connected"
    DISCONNECTED = "Disconnected"


class Health(StrEnum):
    HEALTHY = "Healthy"
    WARNING = "Warning"
    CRITICAL = "Critical"
    UNKNOWN = "Unknown"


class HeartbeatState(StrEnum):
    OK = "OK"
    FAILURE = "Failure"
    UNREACHABLE = "Unreachable"


class QueueStatus(ApiModel):
    """The agent's on-disk send queue as it last reported it."""

    used_bytes: int = Field(default=0, ge=0)
    """Bytes of unacknowledged data on disk."""
    limit_bytes: int = Field(default=0, ge=0)
    """The queue's limit in bytes."""
    percent_used: int = Field(default=0, ge=0, le=100)
    """Send Queue % Used: warning at 50, critical at 60."""
    items: int = Field(default=0, ge=0)
    """Batches waiting to be acknowledged."""
    evictions: int = Field(default=0, ge=0)
    """Items evicted because the queue was full, since the queue was created."""


class CertificateStatus(ApiModel):
    """The agent's current client certificate."""

    serial_number: str | None = Field(default=None, max_length=128)
    """Serial number, hexadecimal."""
    not_after: AwareDatetime | None = None
    """When it expires; renewal starts spec.certificates.renewBefore earlier."""


class AgentStatus(ResourceStatus):
    """Separate facts about the agent, each answering one question, plus conditions."""

    approval: Approval = Approval.PENDING
    """Whether the agent may connect: Pending, Approved or Rejected."""
    connection: Connection = Connection.NEVER_CONNECTED
    """Whether a stream is open now: NeverConnected, Connected or Disconnected."""
    health: Health = Health.UNKNOWN
    """Worst-of rollup of the agent's monitors: Healthy, Warning, Critical or Unknown."""
    heartbeat: HeartbeatState | None = None
    """The health service watcher's verdict: OK, Failure (heartbeats missed) or Unreachable (probe failed too)."""
    maintenance: bool = False
    """Whether a maintenance window is open now."""
    last_heartbeat_time: AwareDatetime | None = None
    """When the last heartbeat arrived."""
    server: DnsLabel | None = None
    """The management server the agent is connected to (or was, when disconnected)."""
    primary_server: DnsLabel | None = None
    """The primary server assigned to the agent."""
    failover_servers: list[DnsLabel] = Field(default_factory=list, max_length=8)
    """The failover servers assigned to the agent, in order."""
    queue: QueueStatus = Field(default_factory=QueueStatus)
    """Send queue depth and evictions."""
    certificate: CertificateStatus = Field(default_factory=CertificateStatus)
    """The agent's client certificate."""
    agent_version: str | None = Field(default=None, max_length=64)
    """Version of the agent software, from its Hello."""


class Agent(CustomResource):
    """A monitored computer and its agent. `kubectl get agents` is the console of a management group."""

    plural: ClassVar[str] = "agents"
    short_names: ClassVar[tuple[str, ...]] = ("agt",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("HEALTH", ".status.health", "string", "Worst-of rollup of the agent's monitors."),
        PrinterColumn("HEARTBEAT", ".status.heartbeat", "string", "OK, Failure or Unreachable."),
        PrinterColumn("CONNECTION", ".status.connection", "string", "NeverConnected, Connected or Disconnected."),
        PrinterColumn("LAST-HEARTBEAT", ".status.lastHeartbeatTime", "date", "Time since the last heartbeat."),
        PrinterColumn("SERVER", ".status.server", "string", "Management server the agent is connected to."),
        PrinterColumn("QUEUE", ".status.queue.percentUsed", "integer", "Send Queue % Used."),
        AGE_COLUMN,
        PrinterColumn("APPROVAL", ".status.approval", "string", "Pending, Approved or Rejected.", priority=1),
        PrinterColumn("MAINTENANCE", ".status.maintenance", "boolean", "In maintenance now.", priority=1),
        PrinterColumn("EVICTIONS", ".status.queue.evictions", "integer", "Queue items evicted.", priority=1),
        PrinterColumn("FQDN", ".spec.fqdn", "string", "The computer's FQDN.", priority=1),
        MESSAGE_COLUMN,
    )

    kind: Literal["Agent"] = "Agent"
    spec: AgentSpec
    status: AgentStatus = Field(default_factory=AgentStatus)
