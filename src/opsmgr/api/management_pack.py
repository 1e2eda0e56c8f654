"""ManagementPack: the rules, monitors and tasks a set of agents runs, with overrides."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from opsmgr.api.common import (
    DESCRIPTION_MAX,
    MESSAGE_COLUMN,
    TEXT_MAX,
    ApiModel,
    CelRule,
    CustomResource,
    LabelSelector,
    ManagementGroupReference,
    PrinterColumn,
    exactly_one_of,
    list_map,
)
from opsmgr.api.conditions import ResourceStatus
from opsmgr.api.management_group import AlertSeverity

RULES_MAX = 256
MONITORS_MAX = 256
TASKS_MAX = 64
OVERRIDES_MAX = 256

# Rule, monitor and task names look like Operations Manager element ids: letters, digits, '.', '_' and '-'.
ElementName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")]
DisplayName = Annotated[str, Field(max_length=256)]


class ToleranceType(StrEnum):
    ABSOLUTE = "Absolute"
    PERCENTAGE = "Percentage"


class OptimizedCollection(ApiModel):
    """Send a sample only when it moved beyond the tolerance, or when too many were suppressed in a row.

    After a run of suppressed samples the previous value is sent too, so charts keep the right shape.
    """

    tolerance: float = Field(ge=0)
    """How far a sample must move from the last sent one to be sent."""
    tolerance_type: ToleranceType = ToleranceType.PERCENTAGE
    """Absolute (in the counter's unit) or Percentage (of the last sent value)."""
    maximum_sample_separation: int = Field(default=4, ge=1, le=1000)
    """Send a sample at least every this many samples, even when it stayed within the tolerance."""


class PerformanceCounter(ApiModel):
    """A performance counter on the agent's computer, named as Operations Manager names Linux counters."""

    object: str = Field(min_length=1, max_length=128)
    """Performance object, e.g. Processor, Memory, Logical Disk, Network Adapter."""
    counter: str = Field(min_length=1, max_length=128)
    """Counter of the object, e.g. "% Processor Time", "% Used Memory"."""
    instance: str | None = Field(default=None, max_length=256)
    """Instance, e.g. _Total or /var; every instance when unset."""
    interval_seconds: int = Field(default=300, ge=10, le=86400)
    """Seconds between samples."""


class PerformanceCollection(PerformanceCounter):
    """Collect a performance counter into the OperationalDB and DataWarehouse."""

    optimized_collection: OptimizedCollection | None = None
    """Suppress samples that barely changed; every sample is sent when unset."""


class EventLevel(StrEnum):
    INFORMATION = "Information"
    WARNING = "Warning"
    ERROR = "Error"


class LogEventCollection(ApiModel):
    """Turn matching lines of a log file into events."""

    log_file: str = Field(min_length=2, max_length=TEXT_MAX, pattern=r"^/")
    """Absolute path of the log file, e.g. /var/log/syslog; rotation is followed."""
    pattern: str = Field(min_length=1, max_length=TEXT_MAX)
    """Regular expression (Python syntax) a line must match to become an event."""
    level: EventLevel = EventLevel.INFORMATION
    """Level of the events created."""
    event_id: int | None = Field(default=None, ge=0, le=65535)
    """Event id recorded with each event."""


class AlertPriority(StrEnum):
    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"


class AlertSettings(ApiModel):
    """The alert raised for each collected event."""

    severity: AlertSeverity = AlertSeverity.WARNING
    """Information, Warning or Critical."""
    priority: AlertPriority = AlertPriority.MEDIUM
    """Low, Medium or High."""
    name: DisplayName | None = None
    """Alert name; the rule's display name (or name) when unset."""


class Rule(ApiModel):
    """A collection rule: set exactly one of performance or event."""

    name: ElementName
    """Name of the rule, unique in the pack."""
    display_name: DisplayName | None = None
    """Name shown to people."""
    enabled: bool = True
    """Whether agents run the rule."""
    performance: PerformanceCollection | None = None
    """Collect a performance counter."""
    event: LogEventCollection | None = None
    """Collect events from a log file."""
    alert: AlertSettings | None = None
    """Raise an alert for each event the rule collects (event rules only)."""

    cel_rules = (
        exactly_one_of(
            "performance", "event",
            "spec.rules: each rule sets exactly one of performance or event; split it into two rules",
        ),
        CelRule(
            "!has(self.alert) || has(self.event)",
            "spec.rules: alert is only for event rules; use a monitor to alert on a performance counter",
            check=lambda r: r.alert is None or r.event is not None,
            field_path=".alert",
        ),
    )


class ThresholdDirection(StrEnum):
    ABOVE = "Above"
    BELOW = "Below"


class AlertOn(StrEnum):
    NONE = "None"
    WARNING = "Warning"
    CRITICAL = "Critical"


class Monitor(ApiModel):
    """A threshold monitor on a performance counter: Healthy, Warning or Critical."""

    name: ElementName
    """Name of the monitor, unique in the pack."""
    display_name: DisplayName | None = None
    """Name shown to people."""
    enabled: bool = True
    """Whether agents run the monitor."""
    performance: PerformanceCounter
    """The counter the monitor samples."""
    direction: ThresholdDirection = ThresholdDirection.ABOVE
    """Above: values above the thresholds are unhealthy (e.g. CPU); Below: values below them are (e.g. free space)."""
    warning_threshold: float | None = None
    """Value at which the state becomes Warning; a two-state monitor (Healthy/Critical) when unset."""
    critical_threshold: float
    """Value at which the state becomes Critical."""
    consecutive_samples: int = Field(default=1, ge=1, le=100)
    """Samples in a row beyond a threshold before the state changes."""
    alert_on: AlertOn = AlertOn.CRITICAL
    """Lowest state that raises an alert (None: the monitor never alerts); the alert resolves with the state."""
    alert_priority: AlertPriority = AlertPriority.MEDIUM
    """Priority of the monitor's alert."""

    cel_rules = (
        CelRule(
            "!has(self.warningThreshold) || (self.direction == 'Above' ? self.warningThreshold < "
            "self.criticalThreshold : self.warningThreshold > self.criticalThreshold)",
            "spec.monitors: warningThreshold must come before criticalThreshold in the monitor's direction "
            "(below it for Above, above it for Below); swap the thresholds or change direction",
            check=lambda m: m.warning_threshold is None or (
                m.warning_threshold < m.critical_threshold if m.direction is ThresholdDirection.ABOVE
                else m.warning_threshold > m.critical_threshold),
            field_path=".warningThreshold",
        ),
    )


class TaskParameter(ApiModel):
    """A value the person running the task supplies; arguments refer to it as {name}."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Parameter name, unique in the task."""
    description: str | None = Field(default=None, max_length=TEXT_MAX)
    """What the parameter means."""
    required: bool = False
    """Whether an AgentTask must supply it."""
    default: str | None = Field(default=None, max_length=TEXT_MAX)
    """Value used when an AgentTask does not supply one."""


class Task(ApiModel):
    """A command agents run on request (an AgentTask)."""

    name: ElementName
    """Name of the task, unique in the pack."""
    display_name: DisplayName | None = None
    """Name shown to people."""
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX)
    """What the task does."""
    command: str = Field(min_length=1, max_length=256)
    """Command to run (absolute path or name); the agent's own allow-list must also permit it."""
    arguments: list[Annotated[str, Field(max_length=TEXT_MAX)]] = Field(default_factory=list, max_length=32)
    """Arguments, in order; {parameter} is replaced by the parameter's value. No shell is involved."""
    parameters: list[TaskParameter] = Field(default_factory=list, max_length=16, json_schema_extra=list_map("name"))
    """Parameters an AgentTask may supply, keyed by name."""
    timeout_seconds: int = Field(default=60, ge=1, le=3600)
    """Seconds before the task is stopped and reported TimedOut."""


class OverrideParameter(StrEnum):
    ENABLED = "Enabled"
    INTERVAL_SECONDS = "IntervalSeconds"
    WARNING_THRESHOLD = "WarningThreshold"
    CRITICAL_THRESHOLD = "CriticalThreshold"
    CONSECUTIVE_SAMPLES = "ConsecutiveSamples"
    TOLERANCE = "Tolerance"
    MAXIMUM_SAMPLE_SEPARATION = "MaximumSampleSeparation"


class Override(ApiModel):
    """Changes one parameter of one rule or monitor, for all targeted agents or those selected."""

    name: ElementName
    """Name of the override, unique in the pack."""
    rule: ElementName | None = None
    """Rule the override changes."""
    monitor: ElementName | None = None
    """Monitor the override changes."""
    parameter: OverrideParameter
    """Parameter that changes."""
    value: str = Field(min_length=1, max_length=256)
    """New value, as text: "false", "90", "600"."""
    agent_selector: LabelSelector | None = None
    """Agents the override applies to (by their labels); every targeted agent when unset."""

    cel_rules = (
        exactly_one_of(
            "rule", "monitor",
            "spec.overrides: each override names exactly one of rule or monitor; split it into two overrides",
        ),
    )


class ManagementPackSpec(ApiModel):
    """A versioned set of rules, monitors and tasks, and the agents that run them."""

    management_group_ref: ManagementGroupReference
    """The ManagementGroup whose agents run the pack."""
    version: str = Field(max_length=32, pattern=r"^[0-9]+(\.[0-9]+){1,3}$")
    """Version of the pack, e.g. 1.0.0.0; agents report which version they run."""
    display_name: DisplayName | None = None
    """Name shown to people."""
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX)
    """What the pack monitors."""
    agent_selector: LabelSelector = Field(default_factory=LabelSelector)
    """Agents of the group that run the pack, by their labels; empty selects every agent of the group."""
    rules: list[Rule] = Field(default_factory=list, max_length=RULES_MAX, json_schema_extra=list_map("name"))
    """Collection rules, keyed by name."""
    monitors: list[Monitor] = Field(default_factory=list, max_length=MONITORS_MAX, json_schema_extra=list_map("name"))
    """Threshold monitors, keyed by name."""
    tasks: list[Task] = Field(default_factory=list, max_length=TASKS_MAX, json_schema_extra=list_map("name"))
    """Tasks agents run on request, keyed by name."""
    overrides: list[Override] = Field(default_factory=list, max_length=OVERRIDES_MAX,
                                      json_schema_extra=list_map("name"))
    """Parameter changes to rules and monitors, keyed by name."""

    def task(self, name: str) -> Task | None:
        """The task of this name, or None."""
        return next((t for t in self.tasks if t.name == name), None)


class ManagementPackStatus(ResourceStatus):
    """What the servers made of the pack."""

    rules: int = Field(default=0, ge=0)
    """Rules in the pack."""
    monitors: int = Field(default=0, ge=0)
    """Monitors in the pack."""
    tasks: int = Field(default=0, ge=0)
    """Tasks in the pack."""
    agents: int = Field(default=0, ge=0)
    """Agents the pack targets."""


class ManagementPack(CustomResource):
    """Rules, monitors and tasks for the agents of a management group."""

    plural: ClassVar[str] = "managementpacks"
    short_names: ClassVar[tuple[str, ...]] = ("mp",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("VERSION", ".spec.version", "string", "Version of the pack."),
        PrinterColumn("RULES", ".status.rules", "integer", "Rules in the pack."),
        PrinterColumn("MONITORS", ".status.monitors", "integer", "Monitors in the pack."),
        PrinterColumn("TASKS", ".status.tasks", "integer", "Tasks in the pack."),
        PrinterColumn("AGENTS", ".status.agents", "integer", "Agents the pack targets.", priority=1),
        MESSAGE_COLUMN,
    )

    kind: Literal["ManagementPack"] = "ManagementPack"
    spec: ManagementPackSpec
    status: ManagementPackStatus = Field(default_factory=ManagementPackStatus)
