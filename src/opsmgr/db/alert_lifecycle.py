"""Alert lifecycle: which resolution-state changes people may make (pure), and making them (asyncpg).

Operations Manager's resolution states: New 0, custom 1..248, Acknowledged 249, Resolved 254, Closed 255 (250..253
are reserved). Active states (below Resolved) may move to any other state; a Resolved alert may only be Closed; a
Closed alert is final. A new occurrence of a resolved alert's key opens a new alert, never reopens the old one,
so the one-active-alert-per-key rule holds. Setting the state an alert already has is a no-op, so scripts may
retry. Changes through a storm (its id) apply to the storm and each of its active members.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from uuid import UUID

import asyncpg

from opsmgr.db.model import FIRST_INACTIVE_RESOLUTION_STATE, ResolutionState

FIRST_CUSTOM_STATE, LAST_CUSTOM_STATE = 1, 248
SHORT_ID_LENGTH = 8


class AlertStateError(ValueError):
    """A change a person asked for that cannot be made, with a message naming the value and the fix."""


class SubjectKind(StrEnum):
    ALERT = "alert"
    STORM = "storm"


def state_label(state: int) -> str:
    try:
        return f"{ResolutionState(state).name.title()} ({state})"
    except ValueError:
        return f"custom state {state}"


def check_state_value(state: int) -> None:
    """Refuse a number that is no resolution state."""
    if state in ResolutionState.__members__.values() or FIRST_CUSTOM_STATE <= state <= LAST_CUSTOM_STATE:
        return
    raise AlertStateError(f"resolution state {state} does not exist: use New (0), a custom state "
                          f"({FIRST_CUSTOM_STATE}-{LAST_CUSTOM_STATE}), Acknowledged (249), Resolved (254) or "
                          "Closed (255)")


def check_transition(alert_id: str, current: int, target: int) -> bool:
    """Whether the change does anything (False: already there); raises AlertStateError when it is not allowed."""
    check_state_value(target)
    if current == target:
        return False
    if current == ResolutionState.CLOSED:
        raise AlertStateError(f"alert {alert_id} is Closed (255), which is final: a new occurrence opens a new "
                              "alert; list the active ones with `opsmgr alerts list`")
    if current >= FIRST_INACTIVE_RESOLUTION_STATE and target < FIRST_INACTIVE_RESOLUTION_STATE:
        raise AlertStateError(f"alert {alert_id} is {state_label(current)} and cannot become {state_label(target)}: "
                              "a resolved alert is only closed; a new occurrence opens a new alert")
    return True


def short_id(subject_id: UUID) -> str:
    return subject_id.hex[:SHORT_ID_LENGTH]


@dataclass(frozen=True)
class StateChangeResult:
    kind: SubjectKind
    subject_id: UUID
    before: int
    after: int
    members_changed: int  # active members of a storm moved with it

    @property
    def changed(self) -> bool:
        return self.before != self.after


async def resolve_subject_id(conn: asyncpg.Connection, text: str) -> tuple[SubjectKind, UUID]:
    """An alert or storm from its full id or a unique prefix of its hex form (as `alerts list` prints)."""
    prefix = text.strip().lower().replace("-", "")
    if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
        raise AlertStateError(f"alert id {text!r} is not an id: give the id (or its first {SHORT_ID_LENGTH} "
                              "characters) that `opsmgr alerts list` prints")
    rows = await conn.fetch(
        """SELECT 'alert' AS kind, alert_id AS id FROM alerts WHERE replace(alert_id::text, '-', '') LIKE $1 || '%'
           UNION ALL
           SELECT 'storm', storm_id FROM alert_storms WHERE replace(storm_id::text, '-', '') LIKE $1 || '%'
           LIMIT 3""", prefix)
    if not rows:
        raise AlertStateError(f"no alert or storm has id {text!r}: list them with `opsmgr alerts list --all` "
                              "and copy an id")
    if len(rows) > 1:
        raise AlertStateError(f"alert id {text!r} matches more than one alert: give more of its characters")
    return SubjectKind(rows[0]["kind"]), rows[0]["id"]


async def set_resolution_state(conn: asyncpg.Connection, kind: SubjectKind, subject_id: UUID, target: int,
                               *, now: datetime | None = None) -> StateChangeResult:
    """Move an alert (or a storm and its active members) to `target`, checking the rule against a locked row."""
    moment = now or datetime.now(UTC)
    table, key = ("alerts", "alert_id") if kind is SubjectKind.ALERT else ("alert_storms", "storm_id")
    async with conn.transaction():
        current = await conn.fetchval(
            f"SELECT resolution_state FROM {table} WHERE {key} = $1 FOR UPDATE", subject_id)  # noqa: S608
        if current is None:
            raise AlertStateError(f"no {kind} has id {subject_id}: list them with `opsmgr alerts list --all`")
        if not check_transition(short_id(subject_id), current, target):
            return StateChangeResult(kind, subject_id, current, current, 0)
        await conn.execute(f"UPDATE {table} SET {_SET_STATE} WHERE {key} = $1", subject_id, target,  # noqa: S608
                           moment)
        members = 0
        if kind is SubjectKind.STORM:
            status = await conn.execute(
                f"UPDATE alerts SET {_SET_STATE} WHERE storm_id = $1 AND resolution_state < 254",  # noqa: S608
                subject_id, target, moment)
            members = int(status.split()[-1])
    return StateChangeResult(kind, subject_id, current, target, members)


# Every change stamps change_xid, the watermark of the warehouse sync and of notifications.
_SET_STATE = """resolution_state = $2::smallint,
    resolved_at = CASE WHEN $2::smallint >= 254 THEN coalesce(resolved_at, $3) ELSE NULL END,
    modified_at = now(), change_xid = pg_current_xact_id()::text::bigint"""
