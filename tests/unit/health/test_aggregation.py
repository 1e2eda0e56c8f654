"""Time-weighted aggregates of one series and one hour, on exact sequences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsmgr.db.aggregation import (
    AggregateKind,
    contiguous_ranges,
    hours_touched,
    late_hour_marks,
    late_hour_marks_of_spans,
    performance_aggregate,
    state_aggregate,
)
from opsmgr.db.model import HealthState

HOUR = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def at(minute: float) -> datetime:
    return HOUR + timedelta(minutes=minute)


def test_an_hour_of_suppressed_samples_averages_to_the_exact_time_weighted_value() -> None:
    # Every 5 min the agent samples: 50 from 09:55 through 10:35 (suppressed, within tolerance), then 90.
    # Optimized collection sends 09:55 (50), then on the jump the suppressed previous value 10:30 (50) and 10:35 (90).
    truth = [(at(m), 50.0) for m in range(-5, 35, 5)] + [(at(m), 90.0) for m in range(35, 60, 5)]
    sent = [(at(-5), 50.0), (at(30), 50.0), (at(35), 90.0), (at(55), 90.0)]
    exact = performance_aggregate(truth, HOUR)
    optimized = performance_aggregate(sent, HOUR)
    assert exact is not None and optimized is not None
    assert exact.average == pytest.approx((35 * 50 + 25 * 90) / 60)
    assert optimized.average == pytest.approx(exact.average)
    assert (optimized.min_value, optimized.max_value, optimized.covered_seconds) == (50.0, 90.0, 3600.0)
    assert optimized.sample_count == 3  # the samples sent inside the hour
    # What a plain mean of the samples sent (Operations Manager's warehouse) would have said instead.
    assert sum(v for t, v in sent if t >= HOUR) / 3 != pytest.approx(exact.average)


def test_a_value_holds_at_most_max_hold_and_only_covered_time_counts() -> None:
    aggregate = performance_aggregate([(at(-90), 10.0), (at(20), 40.0)], HOUR, max_hold=timedelta(minutes=30))
    assert aggregate is not None
    assert aggregate.covered_seconds == 30 * 60  # 10:20 + 30 min; the 08:30 value expired long before
    assert aggregate.average == 40.0 and aggregate.min_value == 40.0


def test_a_value_carried_into_the_hour_counts_for_min_and_max_but_not_sample_count() -> None:
    aggregate = performance_aggregate([(at(-10), 5.0), (at(30), 15.0)], HOUR)
    assert aggregate is not None
    assert (aggregate.sample_count, aggregate.min_value, aggregate.max_value) == (1, 5.0, 15.0)
    assert aggregate.average == pytest.approx(10.0)


def test_an_hour_no_value_reaches_has_no_aggregate() -> None:
    assert performance_aggregate([(at(-120), 1.0), (at(75), 2.0)], HOUR) is None


def test_state_time_is_split_exactly_between_states() -> None:
    h, w, c = HealthState.HEALTHY, HealthState.WARNING, HealthState.CRITICAL
    aggregate = state_aggregate([(at(-30), HealthState.UNKNOWN, h), (at(15), h, w), (at(45), w, c)], HOUR)
    assert aggregate is not None
    assert aggregate.changes == 2
    assert aggregate.percent(h) == 25.0 and aggregate.percent(w) == 50.0 and aggregate.percent(c) == 25.0
    assert aggregate.end_state is c


def test_state_without_earlier_change_takes_the_first_change_old_state_from_the_hour_start() -> None:
    aggregate = state_aggregate([(at(20), HealthState.HEALTHY, HealthState.CRITICAL)], HOUR)
    assert aggregate is not None
    assert aggregate.seconds[HealthState.HEALTHY] == 20 * 60
    assert aggregate.seconds[HealthState.CRITICAL] == 40 * 60
    carried = state_aggregate([], HOUR, carried=HealthState.WARNING)
    assert carried is not None and carried.percent(HealthState.WARNING) == 100.0


def test_late_items_mark_their_hours_and_a_sample_the_next_hour_it_carries_into() -> None:
    assert hours_touched(AggregateKind.PERFORMANCE, at(59)) == [HOUR, HOUR + timedelta(hours=1)]
    assert hours_touched(AggregateKind.STATE, at(59)) == [HOUR]
    rows = {"performance_samples": [("web01", at(1), "x"), ("web01", at(2), "y")],
            "state_changes": [("web02", at(3), "z")]}
    assert late_hour_marks(rows) == [("performance", "web01", HOUR),
                                     ("performance", "web01", HOUR + timedelta(hours=1)),
                                     ("state", "web02", HOUR)]


@given(st.lists(st.tuples(st.sampled_from(["web01", "web02"]), st.sampled_from(["performance_samples",
                                                                                 "state_changes"]),
                          st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                                  timezone(timedelta(hours=-7))]))),
                max_size=40))
def test_late_hour_marks_are_the_hours_each_row_touches_whatever_the_rows_time_zone(
        rows: list[tuple[str, str, datetime]]) -> None:
    # late_hour_marks counts whole hours for speed; it must agree with hours_touched row by row.
    by_table: dict[str, list[tuple[str, datetime]]] = {}
    expected = set()
    for agent, table, moment in rows:
        by_table.setdefault(table, []).append((agent, moment))
        kind = AggregateKind.PERFORMANCE if table == "performance_samples" else AggregateKind.STATE
        expected |= {(kind.value, agent, hour) for hour in hours_touched(kind, moment)}
    assert late_hour_marks(by_table) == sorted(expected)


def test_a_batch_is_marked_from_its_oldest_to_its_newest_hour_and_row_by_row_when_spread_over_days() -> None:
    def spans_of(rows: dict[str, list[tuple[str, datetime]]]) -> dict[str, tuple[datetime, datetime]]:
        return {table: (min(r[1] for r in found), max(r[1] for r in found)) for table, found in rows.items()}

    gap = {"performance_samples": [("web01", at(1)), ("web01", at(1) + timedelta(hours=3))],
           "state_changes": [("web01", at(5)), ("web01", at(5) + timedelta(hours=2))]}
    by_span = late_hour_marks_of_spans([("web01", spans_of(gap), gap)])
    # A superset of the rows' own hours: the hours in between too (re-aggregating them changes nothing).
    assert set(late_hour_marks(gap)) < set(by_span)
    assert by_span == sorted({("performance", "web01", HOUR + timedelta(hours=n)) for n in range(5)}
                             | {("state", "web01", HOUR + timedelta(hours=n)) for n in range(3)})
    spread = {"performance_samples": [("web01", at(1)), ("web01", at(1) + timedelta(days=3))]}
    assert late_hour_marks_of_spans([("web01", spans_of(spread), spread)]) == late_hour_marks(spread)


def test_contiguous_ranges_merge_adjacent_hours() -> None:
    one = timedelta(hours=1)
    assert contiguous_ranges([HOUR + 3 * one, HOUR, HOUR + one, HOUR]) == [
        (HOUR, HOUR + 2 * one), (HOUR + 3 * one, HOUR + 4 * one)]
