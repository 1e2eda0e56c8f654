"""ManagementGroup: management servers, their databases and certificates, and the policies its agents follow."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from opsmgr.api.common import (
    AGE_COLUMN,
    DESCRIPTION_MAX,
    MESSAGE_COLUMN,
    NAME_MAX,
    READY_COLUMN,
    ApiModel,
    CelRule,
    CustomResource,
    DnsLabel,
    Duration,
    LocalReference,
    Port,
    PrinterColumn,
    Quantity,
    ResourceRequirements,
    SecretKeyReference,
    exactly_one_of,
    list_map,
    parse_duration,
    validations,
)
from opsmgr.api.conditions import ResourceStatus

AGENT_PORT = 5723
HEARTBEAT_INTERVAL_SECONDS = 60
MISSED_HEARTBEAT_THRESHOLD = 4
# 10,000 agents heartbeating every 60 s would be 167 status writes a second if each heartbeat were written.
STATUS_UPDATE_SECONDS = 180


class ManagementGroupConditionType(StrEnum):
    DATABASES_READY = "DatabasesReady"
    CERTIFICATES_READY = "CertificatesReady"
    SERVERS_READY = "ServersReady"
    READY = "Ready"


class ServersSpec(ApiModel):
    """The management servers (a StatefulSet) that agents connect to."""

    replicas: int = Field(default=2, ge=1, le=64)
    """Number of management servers; two or more let agents fail over (each serves 3,000 agents or more)."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU and memory of each management server."""


class EmbeddedDatabase(ApiModel):
    """PostgreSQL run by the operator next to the management servers, for development and small groups."""

    storage_size: Quantity = "10Gi"
    """Size of the volume that holds the OperationalDB and DataWarehouse."""


class ExternalDatabase(ApiModel):
    """PostgreSQL run elsewhere, e.g. a CloudNativePG cluster; the operator only creates the schemas."""

    operational: SecretKeyReference
    """Secret key holding the OperationalDB connection URI (e.g. a CloudNativePG app Secret, key `uri`)."""
    warehouse: SecretKeyReference
    """Secret key holding the DataWarehouse connection URI."""


class DatabaseMode(StrEnum):
    EMBEDDED = "Embedded"
    EXTERNAL = "External"


class DatabaseSpec(ApiModel):
    """Where the OperationalDB and DataWarehouse live: set exactly one of `embedded` or `external`."""

    embedded: EmbeddedDatabase | None = None
    """Run PostgreSQL inside the group (the default)."""
    external: ExternalDatabase | None = None
    """Use PostgreSQL servers you run, named by Secrets."""

    cel_rules = (
        exactly_one_of(
            "embedded", "external",
            "spec.database: set exactly one of embedded (PostgreSQL run by opsmgr) or external (Secrets naming "
            "your PostgreSQL); remove the other",
        ),
    )

    @property
    def mode(self) -> DatabaseMode:
        return DatabaseMode.EXTERNAL if self.external is not None else DatabaseMode.EMBEDDED


class RetentionSpec(ApiModel):
    """How long data is kept before grooming, in days (Operations Manager defaults)."""

    operational_days: int = Field(default=7, ge=1, le=3650)
    """Days the OperationalDB keeps events, performance data and closed alerts; active alerts are never groomed."""
    warehouse_raw_days: int = Field(default=10, ge=1, le=3650)
    """Days the DataWarehouse keeps raw events and performance samples."""
    warehouse_aggregated_days: int = Field(default=400, ge=1, le=3650)
    """Days the DataWarehouse keeps hourly and daily aggregates."""
    alert_days: int = Field(default=400, ge=1, le=3650)
    """Days the DataWarehouse keeps alert history."""


class HeartbeatSpec(ApiModel):
    """How often agents report, and how many missed heartbeats raise "Health Service Heartbeat Failure"."""

    interval_seconds: int = Field(default=HEARTBEAT_INTERVAL_SECONDS, ge=10, le=3600)
    """Seconds between an agent's heartbeats."""
    missed_threshold: int = Field(default=MISSED_HEARTBEAT_THRESHOLD, ge=1, le=100)
    """Missed heartbeats in a row before the alert is raised and the computer is probed."""
    status_update_seconds: int = Field(default=STATUS_UPDATE_SECONDS, ge=5, le=3600)
    """Seconds between the servers' writes of an Agent's status.lastHeartbeatTime while nothing else changes (a
    missed heartbeat, a new connection or health is written at once). Lower it below intervalSeconds on a small
    group to keep LAST-HEARTBEAT within one interval; each write is an API request per agent."""


class GeneratedAuthority(ApiModel):
    """A CA the operator creates and keeps in a Secret."""

    validity: Duration = "87600h"
    """Lifetime of the generated CA certificate (Go duration, hours at most)."""


class ImportedAuthority(ApiModel):
    """A CA you provide; the operator validates it and reports problems in CertificatesReady, never replaces it."""

    secret: LocalReference
    """Secret of type kubernetes.io/tls holding the CA (tls.crt, tls.key)."""


class CertificateAuthoritySpec(ApiModel):
    """The CA that signs every server, gateway and agent certificate of the group."""

    generated: GeneratedAuthority | None = None
    """The operator generates the CA (the default)."""
    imported: ImportedAuthority | None = None
    """Use a CA from a Secret you provide."""

    cel_rules = (
        exactly_one_of(
            "generated", "imported",
            "spec.certificates.authority: set exactly one of generated (opsmgr creates the CA) or imported "
            "(a Secret with your CA); remove the other",
        ),
    )


def _default_authority() -> CertificateAuthoritySpec:
    return CertificateAuthoritySpec(generated=GeneratedAuthority())


class CertificatesSpec(ApiModel):
    """The group CA and the certificates it issues to servers, gateways and agents."""

    authority: CertificateAuthoritySpec = Field(default_factory=_default_authority)
    """Generated or imported CA."""
    validity: Duration = "8760h"
    """Lifetime of issued certificates (Go duration, e.g. 8760h for a year)."""
    renew_before: Duration = "2920h"
    """Renew an issued certificate this long before it expires (default: at two thirds of its lifetime)."""

    cel_rules = (
        CelRule(
            "duration(self.renewBefore) < duration(self.validity)",
            "spec.certificates.renewBefore must be shorter than spec.certificates.validity: lower renewBefore "
            "(a third of validity is usual) or raise validity",
            check=lambda c: parse_duration(c.renew_before) < parse_duration(c.validity),
            field_path=".renewBefore",
        ),
    )


class ApprovalPolicy(StrEnum):
    REJECT = "Reject"
    REVIEW = "Review"
    AUTO_APPROVE = "AutoApprove"


class NotificationType(StrEnum):
    ALERTMANAGER = "Alertmanager"
    WEBHOOK = "Webhook"


class AlertSeverity(StrEnum):
    INFORMATION = "Information"
    WARNING = "Warning"
    CRITICAL = "Critical"


class NotificationTarget(ApiModel):
    """Where new and changed alerts are forwarded."""

    name: DnsLabel
    """Name of the target, unique in the group."""
    type: NotificationType
    """Alertmanager (its v2 API) or Webhook (a JSON POST per alert)."""
    url: str = Field(max_length=2048, pattern=r"^https?://")
    """Endpoint URL, e.g. http://alertmanager.monitoring:9093."""
    minimum_severity: AlertSeverity = AlertSeverity.WARNING
    """Alerts below this severity are not forwarded."""
    credentials: SecretKeyReference | None = None
    """Secret key holding a bearer token sent in the Authorization header."""


IN_CLUSTER_QUEUE_LIMIT_MB = 100


class NodeAgentsSpec(ApiModel):
    """One agent per node (a DaemonSet), each monitoring its node and the pods scheduled on it."""

    enabled: bool = False
    """Run an agent on every node the selector picks, with an Agent resource per node."""
    node_selector: dict[str, Annotated[str, Field(max_length=NAME_MAX)]] = Field(default_factory=dict, max_length=16)
    """Only nodes with these labels get an agent; every Linux node when empty."""
    queue_host_path: str = Field(default="/var/lib/opsmgr/node-agents", min_length=2, max_length=1024,
                                 pattern=r"^/[^\x00]*[^/]$")
    """Directory on each node holding the agent's queue, so queued data survives pod restarts and upgrades."""
    queue_limit_mb: int = Field(default=IN_CLUSTER_QUEUE_LIMIT_MB, ge=5, le=1500, alias="queueLimitMB")
    """Size of each node agent's send queue in MB; when full, the oldest lowest-priority data is evicted."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU and memory of each node agent."""


class SidecarAgentsSpec(ApiModel):
    """Agents injected as native sidecars into pods labelled opsmgr.io/inject-agent=true."""

    queue_limit_mb: int = Field(default=IN_CLUSTER_QUEUE_LIMIT_MB, ge=5, le=1500, alias="queueLimitMB")
    """Size of each sidecar's send queue in MB; its emptyDir's sizeLimit is set above it, so the agent evicts
    data before the kubelet evicts the pod."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU and memory of each injected agent container."""
    retire_after: Duration = "15m"
    """An Agent whose pod vanished without a trace is retired after this long (Go duration)."""


class ManagementGroupSpec(ApiModel):
    """A management group: management servers, their OperationalDB and DataWarehouse, and agent policy."""

    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX)
    """What the group monitors, for people."""
    servers: ServersSpec = Field(default_factory=ServersSpec)
    """Management server replicas and resources."""
    database: DatabaseSpec = Field(
        default_factory=lambda: DatabaseSpec(embedded=EmbeddedDatabase()),
        json_schema_extra=validations(CelRule(
            "has(self.embedded) == has(oldSelf.embedded)",
            "spec.database mode is immutable: a group cannot switch between embedded and external databases; "
            "create a new ManagementGroup and move agents to it",
        )),
    )
    """OperationalDB and DataWarehouse: embedded (the default) or external. The mode cannot change later."""
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    """Grooming ages of operational and warehouse data."""
    heartbeat: HeartbeatSpec = Field(default_factory=HeartbeatSpec)
    """Heartbeat interval and missed-heartbeat threshold for the group's agents."""
    agent_port: Port = AGENT_PORT
    """TCP port of the agent channel (gRPC over mutual TLS) on management servers."""
    certificates: CertificatesSpec = Field(default_factory=CertificatesSpec)
    """The group CA and the lifetime of issued certificates."""
    approval_policy: ApprovalPolicy = ApprovalPolicy.REVIEW
    """What happens to a new agent: Reject, Review (Pending until a person approves) or AutoApprove."""
    notifications: list[NotificationTarget] = Field(default_factory=list, max_length=16,
                                                    json_schema_extra=list_map("name"))
    """Alert forwarding targets, keyed by name."""
    node_agents: NodeAgentsSpec = Field(default_factory=NodeAgentsSpec)
    """Node placement: a DaemonSet of agents, one Agent per node."""
    sidecar_agents: SidecarAgentsSpec = Field(default_factory=SidecarAgentsSpec)
    """Sidecar placement: how injected agents of this group run."""


class ServerCounts(ApiModel):
    """Management servers wanted and ready."""

    desired: int = Field(default=0, ge=0)
    """Replicas in the spec."""
    ready: int = Field(default=0, ge=0)
    """Servers that accept agents."""


class AgentCounts(ApiModel):
    """The group's agents by health (worst-of rollup of each agent)."""

    total: int = Field(default=0, ge=0)
    """All Agents of the group."""
    healthy: int = Field(default=0, ge=0)
    """Agents whose health is Healthy."""
    warning: int = Field(default=0, ge=0)
    """Agents whose health is Warning."""
    critical: int = Field(default=0, ge=0)
    """Agents whose health is Critical."""
    unknown: int = Field(default=0, ge=0)
    """Agents whose health is Unknown (not approved, never connected, or heartbeat lost)."""
    pending: int = Field(default=0, ge=0)
    """Agents waiting for approval."""

    @classmethod
    def tally(cls, healths: Iterable[str], pending: int = 0) -> AgentCounts:
        """Counts from each agent's status.health (Healthy, Warning, Critical, Unknown)."""
        counted = Counter(healths)
        return cls(total=sum(counted.values()), healthy=counted["Healthy"], warning=counted["Warning"],
                   critical=counted["Critical"], unknown=counted["Unknown"], pending=pending)


class Endpoints(ApiModel):
    """Addresses agents and tools connect to."""

    agents: str | None = Field(default=None, max_length=512)
    """host:port of the agent channel (the shared agent Service)."""
    enrollment: str | None = Field(default=None, max_length=512)
    """URL of the enrollment endpoint (server-only TLS, join tokens)."""


class ManagementGroupStatus(ResourceStatus):
    """What the operator observed about the group; conditions DatabasesReady, CertificatesReady, ServersReady, Ready."""

    database_mode: DatabaseMode | None = None
    """The database mode the group was created with."""
    servers: ServerCounts = Field(default_factory=ServerCounts)
    """Management servers desired and ready."""
    agents: AgentCounts = Field(default_factory=AgentCounts)
    """Agent counts by health."""
    endpoints: Endpoints = Field(default_factory=Endpoints)
    """Where agents connect and enroll."""
    ca_not_after: datetime | None = None
    """When the group CA expires."""


class ManagementGroup(CustomResource):
    """A management group: management servers, databases, certificates and the policy for its agents."""

    plural: ClassVar[str] = "managementgroups"
    short_names: ClassVar[tuple[str, ...]] = ("mg",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        READY_COLUMN,
        PrinterColumn("SERVERS", ".status.servers.ready", "integer", "Management servers ready."),
        PrinterColumn("AGENTS", ".status.agents.total", "integer", "Agents in the group."),
        AGE_COLUMN,
        MESSAGE_COLUMN,
    )

    kind: Literal["ManagementGroup"] = "ManagementGroup"
    spec: ManagementGroupSpec = Field(default_factory=ManagementGroupSpec)
    status: ManagementGroupStatus = Field(default_factory=ManagementGroupStatus)

