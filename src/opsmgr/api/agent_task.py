"""AgentTask: one run of a management-pack task on one agent, or on every agent a selector picks."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from opsmgr.api.common import (
    AGE_COLUMN,
    MESSAGE_COLUMN,
    TEXT_MAX,
    ApiModel,
    CelRule,
    CustomResource,
    LabelSelector,
    ObjectName,
    PrinterColumn,
    exactly_one_of,
    list_map,
)
from opsmgr.api.conditions import ResourceStatus
from opsmgr.api.management_pack import ElementName

# Output beyond this is cut and `outputTruncated` set, so a chatty command cannot bloat etcd.
OUTPUT_LIMIT = 32768


class TaskReference(ApiModel):
    """A task defined in a ManagementPack in the same namespace."""

    management_pack: ObjectName
    """Name of the ManagementPack that defines the task."""
    name: ElementName
    """Name of the task in the pack."""


class ParameterValue(ApiModel):
    """A value for one of the task's parameters."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Parameter name, as the task defines it."""
    value: str = Field(max_length=TEXT_MAX)
    """Value passed to the task (as an argument, never through a shell)."""


class AgentTaskSpec(ApiModel):
    """Which task to run, where, and with what parameters: set exactly one of agent or agentSelector."""

    task: TaskReference
    """The task to run."""
    agent: ObjectName | None = None
    """Name of the Agent (in this namespace) that runs the task."""
    agent_selector: LabelSelector | None = None
    """Run on every Agent of this namespace whose labels match; one child AgentTask is created per agent."""
    parameters: list[ParameterValue] = Field(default_factory=list, max_length=16, json_schema_extra=list_map("name"))
    """Parameter values, keyed by name; parameters not given take the task's defaults."""
    timeout_seconds: int | None = Field(default=None, ge=1, le=3600)
    """Seconds before the run is stopped and reported TimedOut; the task's own timeout when unset."""

    cel_rules = (
        exactly_one_of(
            "agent", "agentSelector",
            "spec: set exactly one of agent (one Agent by name) or agentSelector (every Agent with matching labels)",
        ),
    )

    def parameter_values(self) -> dict[str, str]:
        """The supplied parameters as name -> value."""
        return {p.name: p.value for p in self.parameters}


class TaskPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"

    @property
    def finished(self) -> bool:
        return self in (TaskPhase.SUCCEEDED, TaskPhase.FAILED, TaskPhase.TIMED_OUT)


class ChildTaskCounts(ApiModel):
    """For the selector form: the child AgentTasks by phase."""

    total: int = Field(default=0, ge=0)
    """Child AgentTasks created."""
    pending: int = Field(default=0, ge=0)
    """Children not started yet."""
    running: int = Field(default=0, ge=0)
    """Children running."""
    succeeded: int = Field(default=0, ge=0)
    """Children that exited with code 0."""
    failed: int = Field(default=0, ge=0)
    """Children that failed or timed out."""


class AgentTaskStatus(ResourceStatus):
    """Progress and result of the run."""

    phase: TaskPhase = TaskPhase.PENDING
    """Pending, Running, Succeeded, Failed or TimedOut."""
    exit_code: int | None = None
    """Exit code of the command."""
    output: str | None = Field(default=None, max_length=OUTPUT_LIMIT)
    """Standard output and error of the command, cut at 32768 characters."""
    output_truncated: bool = False
    """Whether output was cut."""
    start_time: AwareDatetime | None = None
    """When the agent started the command."""
    completion_time: AwareDatetime | None = None
    """When the command finished."""
    children: ChildTaskCounts | None = None
    """For the selector form: the child AgentTasks by phase."""


class AgentTask(CustomResource):
    """One task run. The spec cannot change once created: create another AgentTask to run again."""

    plural: ClassVar[str] = "agenttasks"
    short_names: ClassVar[tuple[str, ...]] = ("atask",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("PHASE", ".status.phase", "string", "Pending, Running, Succeeded, Failed or TimedOut."),
        PrinterColumn("AGENT", ".spec.agent", "string", "Agent that runs the task."),
        PrinterColumn("EXIT", ".status.exitCode", "integer", "Exit code of the command."),
        AGE_COLUMN,
        PrinterColumn("TASK", ".spec.task.name", "string", "Task that runs.", priority=1),
        MESSAGE_COLUMN,
    )
    spec_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("self == oldSelf", "spec is immutable: an AgentTask runs once; create a new AgentTask to run again"),
    )

    kind: Literal["AgentTask"] = "AgentTask"
    spec: AgentTaskSpec
    status: AgentTaskStatus = Field(default_factory=AgentTaskStatus)
