"""Hourly and daily warehouse aggregates of performance and state, computed incrementally and time-weighted.

Time-weighted (the defect of Operations Manager's own warehouse this avoids): each sample's value holds until the
series' next sample, at most MAX_HOLD, and each hour averages the values by the time they held inside it. A value
that holds across the hour boundary carries into the next hour. Optimized collection suppresses samples that stay
within tolerance and sends the previous value when it resumes, so the held values are the suppressed ones and the
average is exact; a plain average of the samples sent would weigh the changes and ignore the flat stretches.
Min and max are over the values in effect during the hour (carried-in included); sample_count counts the samples
taken in it. A state holds until the monitor's next change; hours get the seconds spent in each state.

Incremental: a watermark per kind says every hour before it was aggregated once. Late data (a replay after an
outage) lands in hours already aggregated, so the warehouse writer marks them dirty in the transaction of the
data (`mark_late_hours`), and the next run re-aggregates them (and the days that hold them). A performance sample
affects its hour and the hours it carries into; a state change affects every hour until the monitor's next
change, so a dirty state hour re-aggregates that agent's hours from there to the watermark.

Why marking is race-free: the writer marks every hour that ends before its transaction's start plus SETTLE; the
aggregator only aggregates hours that have ended. A transaction shorter than SETTLE that marks nothing therefore
commits before its hour ends, so the aggregation of that hour sees its rows. Marks are upserted with a row lock,
so the aggregator's delete of a mark waits for the writer holding it, and then reads its data.

The functions `performance_aggregate` and `state_aggregate` are the pure specification of one hour of one
series; the SQL below computes the same over every series at once (tests hold them to each other).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from opsmgr.db.model import HealthState
from opsmgr.db.schema import LOCK_NAMESPACE

AGGREGATION_LOCK = 4
HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = EPOCH.toordinal()
DAY = timedelta(days=1)
MAX_HOLD = timedelta(hours=1)  # a value older than this says nothing about now (the agent stopped sampling)
SETTLE = timedelta(minutes=5)  # longer than any write transaction lasts
CHUNK = timedelta(hours=6)  # hours aggregated per statement, so a long catch-up never builds one huge sort


class AggregateKind(StrEnum):
    PERFORMANCE = "performance"
    STATE = "state"


def floor_hour(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


# --- The specification: one series, one hour -------------------------------------------------------------------


@dataclass(frozen=True)
class PerformanceAggregate:
    sample_count: int
    min_value: float
    max_value: float
    average: float
    covered_seconds: float


def performance_aggregate(samples: Iterable[tuple[datetime, float]], hour: datetime,
                          max_hold: timedelta = MAX_HOLD) -> PerformanceAggregate | None:
    """One series' aggregate for [hour, hour + 1 h), from its samples (any order); None when nothing held."""
    ordered = sorted(samples, key=lambda s: s[0])
    end = hour + HOUR
    count, values, weighted, covered = 0, [], 0.0, 0.0
    for index, (at, value) in enumerate(ordered):
        following = ordered[index + 1][0] if index + 1 < len(ordered) else None
        until = min(following, at + max_hold) if following is not None else at + max_hold
        start, stop = max(at, hour), min(until, end)
        if hour <= at < end:
            count += 1
        if (hour <= at < end) or start < stop:
            values.append(value)
            seconds = max((stop - start).total_seconds(), 0.0)
            weighted += value * seconds
            covered += seconds
    if not values:
        return None
    average = weighted / covered if covered else sum(values) / len(values)
    return PerformanceAggregate(count, min(values), max(values), average, covered)


@dataclass(frozen=True)
class StateAggregate:
    changes: int
    seconds: Mapping[HealthState, float]
    end_state: HealthState

    def percent(self, state: HealthState) -> float:
        total = sum(self.seconds.values())
        return 100 * self.seconds[state] / total if total else 0.0


def state_aggregate(changes: Iterable[tuple[datetime, HealthState, HealthState]], hour: datetime,
                    carried: HealthState | None = None) -> StateAggregate | None:
    """One monitor's aggregate for [hour, hour + 1 h) from its changes (at, old, new) and the state carried in.

    Without a carried state, the first change's old state is taken to have held since that hour began.
    """
    end = hour + HOUR
    ordered = sorted(changes, key=lambda c: c[0])
    before = [c for c in ordered if c[0] < hour]
    inside = [c for c in ordered if hour <= c[0] < end]
    timeline: list[tuple[datetime, HealthState]] = []
    if before:
        timeline.append((hour, before[-1][2]))
    elif carried is not None:
        timeline.append((hour, carried))
    elif inside:
        timeline.append((floor_hour(inside[0][0]), inside[0][1]))
    timeline += [(at, new) for at, _, new in inside]
    if not timeline:
        return None
    seconds = dict.fromkeys(HealthState, 0.0)
    for index, (at, state) in enumerate(timeline):
        until = timeline[index + 1][0] if index + 1 < len(timeline) else end
        seconds[state] += (until - at).total_seconds()
    return StateAggregate(len(inside), seconds, timeline[-1][1])


# --- Marking late hours at write time ----------------------------------------------------------------------------


def hours_touched(kind: AggregateKind, at: datetime) -> list[datetime]:
    """The hours whose aggregates an item at `at` can change (a state's later hours are found when aggregating)."""
    first = floor_hour(at)
    last = floor_hour(at + MAX_HOLD) if kind is AggregateKind.PERFORMANCE else first
    return [first + HOUR * n for n in range(int((last - first) / HOUR) + 1)]


_MARKED_TABLES = (("performance_samples", AggregateKind.PERFORMANCE), ("state_changes", AggregateKind.STATE))
# A batch whose rows lie within this many hours is marked from its oldest to its newest row's hour, not row by row.
SPAN_MARK_HOURS = 24


def _hour_of(at: datetime) -> int:
    """Whole hours since the epoch. From the calendar fields when the time is in UTC, as ingested times are: half
    the cost of timestamp(), whose exact arithmetic goes through Python integers (this runs per row)."""
    return (at.toordinal() - _EPOCH_DAY) * 24 + at.hour if at.tzinfo is UTC else int(at.timestamp()) // 3600


def _row_hours(rows: Iterable[tuple[Any, ...]]) -> set[tuple[str, int]]:
    """(agent, hour) of each row; every time-series row starts (agent, time)."""
    return {(row[0], _hour_of(row[1])) for row in rows}


def _marks(touched: Mapping[AggregateKind, set[tuple[str, int]]]) -> list[tuple[str, str, datetime]]:
    """(kind, agent, hour) for the (agent, hour) pairs touched, with the hours a sample's value carries into."""
    hold = {AggregateKind.PERFORMANCE: int(MAX_HOLD.total_seconds()) // 3600, AggregateKind.STATE: 0}
    marks: set[tuple[str, str, int]] = set()
    for kind, pairs in touched.items():
        for agent, first in pairs:
            marks.update((kind.value, agent, first + n) for n in range(hold[kind] + 1))
    return [(kind, agent, EPOCH + HOUR * hour) for kind, agent, hour in sorted(marks)]


def late_hour_marks(rows: Mapping[str, Sequence[tuple[Any, ...]]]) -> list[tuple[str, str, datetime]]:
    """(kind, agent, hour) for the performance and state rows a warehouse transaction writes, sorted.

    The same hours as `hours_touched`, counted in whole hours since the epoch (UTC hours are aligned to it): this
    runs for every warehouse row, and building datetimes per row cost more than the COPY of the row itself.
    """
    return _marks({kind: _row_hours(rows.get(table, ())) for table, kind in _MARKED_TABLES})


def late_hour_marks_of_spans(
        batches: Iterable[tuple[str, Mapping[str, tuple[datetime, datetime]], Mapping[str, Sequence[tuple[Any, ...]]]]],
) -> list[tuple[str, str, datetime]]:
    """The marks for the batches of a warehouse transaction, each given as (agent, each table's oldest and newest
    row time, its rows), from the spans: every hour between a batch's oldest and newest row, without looking at
    its rows (which a server-formed bulk batch never makes: opsmgr.db.routing.LazyRows). A superset of the hours
    the rows touch is harmless (re-aggregating an hour nothing changed gives the same aggregates) and costs one
    mark per hour in between; a batch spread over more than SPAN_MARK_HOURS is marked row by row instead."""
    touched: dict[AggregateKind, set[tuple[str, int]]] = {kind: set() for _, kind in _MARKED_TABLES}
    for agent, spans, rows in batches:
        for table, kind in _MARKED_TABLES:
            span = spans.get(table)
            if span is None:
                continue
            first, last = _hour_of(span[0]), _hour_of(span[1])
            if last - first <= SPAN_MARK_HOURS:
                touched[kind].update((agent, hour) for hour in range(first, last + 1))
            else:
                touched[kind] |= _row_hours(rows[table])
    return _marks(touched)


async def mark_late_hours(conn: asyncpg.Connection, marks: Sequence[tuple[str, str, datetime]]) -> None:
    """Mark these (kind, agent, hour)s where they may already be aggregated; call inside the writing transaction."""
    if not marks:
        return
    kinds, agents, hours = zip(*marks, strict=True)
    await conn.execute(
        """INSERT INTO aggregation_dirty_hours AS d (kind, agent, hour)
           SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS m (kind, agent, hour)
           WHERE m.hour + interval '1 hour' <= now() + $4::interval
           ORDER BY 1, 2, 3
           ON CONFLICT (kind, agent, hour) DO UPDATE SET marked_at = now()""",
        list(kinds), list(agents), list(hours), SETTLE)


# --- Aggregating -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregationPolicy:
    first_lookback: timedelta = timedelta(days=10)  # where a fresh warehouse starts: its raw retention
    state_lookback: timedelta = timedelta(days=10)  # how far back a monitor's last change is looked for


@dataclass(frozen=True)
class AggregationReport:
    hours: Mapping[AggregateKind, int]  # hourly rows written
    days: Mapping[AggregateKind, int]  # daily rows written
    dirty: Mapping[AggregateKind, int]  # late (agent, hour) marks consumed
    aggregated_until: Mapping[AggregateKind, datetime]


def contiguous_ranges(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """[start, end) ranges covering the given hours, adjacent ones merged."""
    ranges: list[tuple[datetime, datetime]] = []
    for hour in sorted(set(hours)):
        if ranges and ranges[-1][1] == hour:
            ranges[-1] = (ranges[-1][0], hour + HOUR)
        else:
            ranges.append((hour, hour + HOUR))
    return ranges


def chunks(start: datetime, end: datetime, size: timedelta = CHUNK) -> list[tuple[datetime, datetime]]:
    out = []
    while start < end:
        out.append((start, min(start + size, end)))
        start += size
    return out


async def aggregate_warehouse(conn: asyncpg.Connection, policy: AggregationPolicy = AggregationPolicy(),
                              *, now: datetime | None = None) -> AggregationReport:
    """Aggregate the hours completed since the last run and re-aggregate late-data hours; then their days.

    The management server runs it a few minutes past every hour (any replica: an advisory lock serialises them).
    """
    complete_until = floor_hour(now or datetime.now(UTC))
    hours: dict[AggregateKind, int] = {}
    days: dict[AggregateKind, int] = {}
    dirty: dict[AggregateKind, int] = {}
    until: dict[AggregateKind, datetime] = {}
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, AGGREGATION_LOCK)
        for kind in AggregateKind:
            stored = await conn.fetchval("SELECT aggregated_until FROM aggregation_watermarks WHERE kind = $1",
                                         kind.value)
            watermark = stored or floor_hour(complete_until - policy.first_lookback)
            marks = await conn.fetch(
                """DELETE FROM aggregation_dirty_hours WHERE kind = $1 AND hour < $2 RETURNING agent, hour""",
                kind.value, complete_until)
            dirty[kind] = len(marks)
            late: dict[str, list[datetime]] = defaultdict(list)
            for mark in marks:
                if mark["hour"] < watermark:  # hours past the watermark are aggregated for everyone below anyway
                    late[mark["agent"]].append(mark["hour"])
            # (agents or None for all, start, end): late ranges first, so the catch-up carries corrected states.
            work: list[tuple[list[str] | None, datetime, datetime]] = []
            for agent, agent_hours in sorted(late.items()):
                if kind is AggregateKind.PERFORMANCE:
                    work += [([agent], start, end) for start, end in contiguous_ranges(agent_hours)]
                else:
                    work.append(([agent], min(agent_hours), watermark))
            work += [(None, watermark, complete_until)] if watermark < complete_until else []
            hourly = kind_days = 0
            for agents, start, end in work:
                for lo, hi in chunks(start, end):
                    hourly += await _aggregate_hours(conn, kind, agents, lo, hi, policy=policy)
                first_day, last_day = start.date(), (end - timedelta(microseconds=1)).date()
                kind_days += await _aggregate_days(conn, kind, agents, day_start(first_day),
                                                   day_start(last_day) + DAY)
            hours[kind], days[kind] = hourly, kind_days
            until[kind] = max(watermark, complete_until)
            await conn.execute(
                """INSERT INTO aggregation_watermarks AS w (kind, aggregated_until) VALUES ($1, $2)
                   ON CONFLICT (kind) DO UPDATE SET aggregated_until = greatest(w.aggregated_until,
                       excluded.aggregated_until), aggregated_at = now()""", kind.value, until[kind])
    return AggregationReport(hours, days, dirty, until)


def _rows_written(status: str) -> int:
    return int(status.rsplit(maxsplit=1)[-1])


async def _aggregate_hours(conn: asyncpg.Connection, kind: AggregateKind, agents: list[str] | None,
                           start: datetime, end: datetime, *, policy: AggregationPolicy) -> int:
    if kind is AggregateKind.PERFORMANCE:
        return _rows_written(await conn.execute(_PERFORMANCE_HOURLY, start, end, MAX_HOLD, agents))
    return _rows_written(await conn.execute(_STATE_HOURLY, start, end, policy.state_lookback, agents))


async def _aggregate_days(conn: asyncpg.Connection, kind: AggregateKind, agents: list[str] | None,
                          start: datetime, end: datetime) -> int:
    sql = _PERFORMANCE_DAILY if kind is AggregateKind.PERFORMANCE else _STATE_DAILY
    return _rows_written(await conn.execute(sql, start, end, agents))


# Hours are UTC hours whatever the session's time zone, hence date_trunc(..., 'UTC').
_PIECES = """
pieces AS (
    SELECT held.*, hour, greatest(t, hour) AS piece_start, least(until, hour + interval '1 hour') AS piece_end
    FROM held CROSS JOIN LATERAL generate_series(
        date_trunc('hour', t, 'UTC'),
        greatest(date_trunc('hour', t, 'UTC'), until - interval '1 microsecond'), interval '1 hour') AS hour
    WHERE hour >= $1 AND hour < $2
)"""

_SECONDS = "extract(epoch FROM piece_end - piece_start)"

_PERFORMANCE_HOURLY = f"""
WITH held AS (
    SELECT agent, object_key, object_name, counter_name, instance_name, sampled_at AS t, value,
           least(coalesce(lead(sampled_at) OVER series, sampled_at + $3::interval),
                 sampled_at + $3::interval) AS until
    FROM performance_samples
    WHERE sampled_at >= $1::timestamptz - $3::interval AND sampled_at < $2 AND ($4::text[] IS NULL OR agent = ANY($4))
    WINDOW series AS (PARTITION BY agent, object_key, object_name, counter_name, instance_name
                      ORDER BY sampled_at, batch_epoch, batch_seq, item_no)
), {_PIECES}
INSERT INTO performance_hourly AS p (agent, object_key, object_name, counter_name, instance_name, hour,
                                     sample_count, min_value, max_value, average, covered_seconds)
SELECT agent, object_key, object_name, counter_name, instance_name, hour,
       count(*) FILTER (WHERE t >= hour), min(value), max(value),
       coalesce(sum(value * {_SECONDS}) / nullif(sum({_SECONDS}), 0), avg(value)), sum({_SECONDS})
FROM pieces
GROUP BY agent, object_key, object_name, counter_name, instance_name, hour
ON CONFLICT (agent, object_key, object_name, counter_name, instance_name, hour) DO UPDATE SET
    sample_count = excluded.sample_count, min_value = excluded.min_value, max_value = excluded.max_value,
    average = excluded.average, covered_seconds = excluded.covered_seconds, aggregated_at = now()
"""  # noqa: S608

# A monitor's state entering the range comes from the previous hour's aggregate, else its last change within
# the lookback; it carries only while the agent still sends anything, so a deleted agent's states stop.
_STATE_HOURLY = f"""
WITH recent AS (
    SELECT agent, object_key, monitor, changed_at AS t, old_state, new_state AS state, batch_epoch, batch_seq, item_no
    FROM state_changes
    WHERE changed_at >= $1 AND changed_at < $2 AND ($4::text[] IS NULL OR agent = ANY($4))
), carried AS (
    SELECT DISTINCT ON (agent, object_key, monitor) agent, object_key, monitor, state FROM (
        SELECT agent, object_key, monitor, end_state AS state, 0 AS rank, NULL::timestamptz AS t,
               NULL::uuid AS batch_epoch, NULL::bigint AS batch_seq, NULL::integer AS item_no
        FROM state_hourly
        WHERE hour = $1::timestamptz - interval '1 hour' AND ($4::text[] IS NULL OR agent = ANY($4))
        UNION ALL
        SELECT agent, object_key, monitor, new_state, 1, changed_at, batch_epoch, batch_seq, item_no
        FROM state_changes
        WHERE changed_at < $1 AND changed_at >= $1::timestamptz - $3::interval
          AND ($4::text[] IS NULL OR agent = ANY($4))
    ) c
    WHERE EXISTS (SELECT 1 FROM committed_batches b
                  WHERE b.agent = c.agent AND b.committed_at >= $1::timestamptz - $3::interval)
    ORDER BY agent, object_key, monitor, rank, t DESC, batch_epoch DESC, batch_seq DESC, item_no DESC
), first_known AS (
    SELECT DISTINCT ON (agent, object_key, monitor) agent, object_key, monitor, date_trunc('hour', t, 'UTC') AS t,
           old_state AS state
    FROM recent r
    WHERE NOT EXISTS (SELECT 1 FROM carried c
                      WHERE (c.agent, c.object_key, c.monitor) = (r.agent, r.object_key, r.monitor))
    ORDER BY agent, object_key, monitor, r.t, batch_epoch, batch_seq, item_no
), timeline AS (
    SELECT agent, object_key, monitor, $1::timestamptz AS t, state, false AS counted,
           NULL::uuid AS batch_epoch, NULL::bigint AS batch_seq, NULL::integer AS item_no FROM carried
    UNION ALL
    SELECT agent, object_key, monitor, t, state, false, NULL, NULL, NULL FROM first_known
    UNION ALL
    SELECT agent, object_key, monitor, t, state, true, batch_epoch, batch_seq, item_no FROM recent
), held AS (
    SELECT agent, object_key, monitor, t, state, counted,
           coalesce(lead(t) OVER series, $2::timestamptz) AS until, row_number() OVER series AS ordinal
    FROM timeline
    WINDOW series AS (PARTITION BY agent, object_key, monitor ORDER BY t, counted, batch_epoch, batch_seq, item_no)
), {_PIECES}
INSERT INTO state_hourly AS s (agent, object_key, monitor, hour, changes, unknown_seconds, healthy_seconds,
                               warning_seconds, critical_seconds, end_state)
SELECT agent, object_key, monitor, hour, count(*) FILTER (WHERE counted AND t >= hour),
       coalesce(sum({_SECONDS}) FILTER (WHERE state = 0), 0), coalesce(sum({_SECONDS}) FILTER (WHERE state = 1), 0),
       coalesce(sum({_SECONDS}) FILTER (WHERE state = 2), 0), coalesce(sum({_SECONDS}) FILTER (WHERE state = 3), 0),
       (array_agg(state ORDER BY ordinal DESC))[1]
FROM pieces
GROUP BY agent, object_key, monitor, hour
ON CONFLICT (agent, object_key, monitor, hour) DO UPDATE SET
    changes = excluded.changes, unknown_seconds = excluded.unknown_seconds,
    healthy_seconds = excluded.healthy_seconds, warning_seconds = excluded.warning_seconds,
    critical_seconds = excluded.critical_seconds, end_state = excluded.end_state, aggregated_at = now()
"""  # noqa: S608

_PERFORMANCE_DAILY = """
INSERT INTO performance_daily AS p (agent, object_key, object_name, counter_name, instance_name, day,
                                    sample_count, min_value, max_value, average, covered_seconds)
SELECT agent, object_key, object_name, counter_name, instance_name, date_trunc('day', hour, 'UTC'),
       sum(sample_count), min(min_value), max(max_value),
       coalesce(sum(average * covered_seconds) / nullif(sum(covered_seconds), 0), avg(average)), sum(covered_seconds)
FROM performance_hourly
WHERE hour >= $1 AND hour < $2 AND ($3::text[] IS NULL OR agent = ANY($3))
GROUP BY agent, object_key, object_name, counter_name, instance_name, date_trunc('day', hour, 'UTC')
ON CONFLICT (agent, object_key, object_name, counter_name, instance_name, day) DO UPDATE SET
    sample_count = excluded.sample_count, min_value = excluded.min_value, max_value = excluded.max_value,
    average = excluded.average, covered_seconds = excluded.covered_seconds, aggregated_at = now()
"""

_STATE_DAILY = """
INSERT INTO state_daily AS s (agent, object_key, monitor, day, changes, unknown_seconds, healthy_seconds,
                              warning_seconds, critical_seconds, end_state)
SELECT agent, object_key, monitor, date_trunc('day', hour, 'UTC'), sum(changes), sum(unknown_seconds),
       sum(healthy_seconds), sum(warning_seconds), sum(critical_seconds), (array_agg(end_state ORDER BY hour DESC))[1]
FROM state_hourly
WHERE hour >= $1 AND hour < $2 AND ($3::text[] IS NULL OR agent = ANY($3))
GROUP BY agent, object_key, monitor, date_trunc('day', hour, 'UTC')
ON CONFLICT (agent, object_key, monitor, day) DO UPDATE SET
    changes = excluded.changes, unknown_seconds = excluded.unknown_seconds,
    healthy_seconds = excluded.healthy_seconds, warning_seconds = excluded.warning_seconds,
    critical_seconds = excluded.critical_seconds, end_state = excluded.end_state, aggregated_at = now()
"""
