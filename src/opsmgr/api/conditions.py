"""Status conditions per the Kubernetes API conventions, and the pure functions that maintain them.

A handler decides `(status, reason, message)`, builds a `Condition` with `Condition.of`, and folds it into the
current list with `set_condition`; the transition time moves only when the status does, so writing the same
decision twice changes nothing and the handler can skip the write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

from opsmgr.api.common import DNS_SUBDOMAIN_PATTERN, ApiModel, list_map

READY = "Ready"
CONDITION_TYPE_PATTERN = rf"^({DNS_SUBDOMAIN_PATTERN[1:-1]}/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"

    @classmethod
    def of(cls, value: bool | ConditionStatus) -> ConditionStatus:
        if isinstance(value, ConditionStatus):
            return value
        return cls.TRUE if value else cls.FALSE


class Condition(ApiModel):
    """One aspect of the object's state, as in metav1.Condition."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)
    """What the condition is about, in CamelCase, e.g. Ready or DatabasesReady."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024, pattern=REASON_PATTERN)
    """Why the condition has its status, as one CamelCase word a tool can match."""
    message: str = Field(default="", max_length=32768)
    """Why the condition has its status, as a sentence a person reads."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this condition was decided from."""

    @classmethod
    def of(
        cls,
        type: str,
        status: bool | ConditionStatus,
        reason: str,
        message: str = "",
        *,
        generation: int | None = None,
        now: datetime | None = None,
    ) -> Condition:
        """A condition decided now; True/False may be given as a bool."""
        moment = (now or datetime.now(UTC)).replace(microsecond=0)
        return cls(type=type, status=ConditionStatus.of(status), reason=reason, message=message,
                   last_transition_time=moment, observed_generation=generation)

    @property
    def is_true(self) -> bool:
        return self.status is ConditionStatus.TRUE

    def same_decision(self, other: Condition) -> bool:
        """Whether both say the same thing, whatever their transition times."""
        return (self.type, self.status, self.reason, self.message, self.observed_generation) == (
            other.type, other.status, other.reason, other.message, other.observed_generation)


def find_condition(conditions: Iterable[Condition], type: str) -> Condition | None:
    """The condition of this type, or None."""
    return next((c for c in conditions if c.type == type), None)


def is_condition_true(conditions: Iterable[Condition], type: str) -> bool:
    """Whether the condition of this type exists and is True."""
    found = find_condition(conditions, type)
    return found is not None and found.is_true


def set_condition(conditions: Sequence[Condition], new: Condition) -> list[Condition]:
    """The list with `new` in place of its type; keeps the old transition time when the status did not change."""
    old = find_condition(conditions, new.type)
    if old is not None and old.status == new.status:
        new = new.model_copy(update={"last_transition_time": old.last_transition_time})
    if old is None:
        return [*conditions, new]
    return [new if c.type == new.type else c for c in conditions]


def summarize_ready(
    conditions: Sequence[Condition],
    required: Sequence[str],
    *,
    generation: int | None = None,
    now: datetime | None = None,
) -> Condition:
    """The top-level Ready condition: True when every required condition is True, else why not.

    The reason is the first condition that holds readiness back (its own reason when False, `<Type>Unknown`
    when missing or Unknown), so a tool sees the cause without reading the other conditions.
    """
    blocking: list[tuple[str, str]] = []
    for type in required:
        found = find_condition(conditions, type)
        if found is None:
            blocking.append((f"{type}Unknown", f"{type} has not been decided yet"))
        elif found.status is ConditionStatus.UNKNOWN:
            blocking.append((f"{type}Unknown", f"{type}: {found.message or found.reason}"))
        elif not found.is_true:
            blocking.append((found.reason, f"{type}: {found.message or found.reason}"))
    if not blocking:
        return Condition.of(READY, True, "AllReady", "All of " + ", ".join(required) + " are True.",
                            generation=generation, now=now)
    reason = blocking[0][0]
    message = "; ".join(text for _, text in blocking)
    return Condition.of(READY, False, reason, message, generation=generation, now=now)


class ResourceStatus(ApiModel):
    """What every opsmgr status has: the generation it describes and its conditions, Ready among them."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the operator last acted on; older than metadata.generation means work is pending."""
    conditions: list[Condition] = Field(default_factory=list, max_length=32,
                                        json_schema_extra=list_map("type"))
    """The latest observations of the object's state, one per type; Ready is always present once reconciled."""

    def condition(self, type: str) -> Condition | None:
        """The condition of this type, or None."""
        return find_condition(self.conditions, type)

    @property
    def ready(self) -> bool:
        """Whether the Ready condition is True."""
        return is_condition_true(self.conditions, READY)
