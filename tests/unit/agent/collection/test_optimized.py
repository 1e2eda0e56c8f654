"""Optimized collection sends exactly the samples Operations Manager would, in order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from opsmgr.agent.optimized import OptimizedCollector, Sample
from opsmgr.api.management_pack import OptimizedCollection, ToleranceType

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(settings: OptimizedCollection | None, values: Sequence[float]) -> list[tuple[int, float]]:
    """(sample index, value) of every sample sent, in sending order."""
    collector = OptimizedCollector(settings)
    sent: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        for sample in collector.offer(Sample(T0 + timedelta(seconds=index), value)):
            sent.append((int((sample.at - T0).total_seconds()), sample.value))
    return sent


def test_every_sample_is_sent_without_optimized_collection() -> None:
    assert run(None, [1, 1, 1]) == [(0, 1), (1, 1), (2, 1)]


def test_absolute_tolerance_suppresses_small_moves_and_sends_the_previous_value_before_a_step() -> None:
    settings = OptimizedCollection(tolerance=2, tolerance_type=ToleranceType.ABSOLUTE, maximum_sample_separation=10)
    # 51 and 52 are within 2 of 50 (52 is exactly 2: not beyond); 60 is a step, so 52 goes out first;
    # 61 is held against 60 and goes out ahead of the drop to 55.
    assert run(settings, [50, 51, 52, 60, 61, 55]) == [(0, 50), (2, 52), (3, 60), (4, 61), (5, 55)]


def test_a_step_right_after_a_sent_sample_sends_no_previous_value() -> None:
    settings = OptimizedCollection(tolerance=2, tolerance_type=ToleranceType.ABSOLUTE, maximum_sample_separation=10)
    assert run(settings, [50, 60, 70]) == [(0, 50), (1, 60), (2, 70)]


def test_percentage_tolerance_is_relative_to_the_last_sent_value() -> None:
    settings = OptimizedCollection(tolerance=10, tolerance_type=ToleranceType.PERCENTAGE, maximum_sample_separation=10)
    # Last sent 100: 109 and 110 stay (10 % is not beyond), 111 goes after 110; from 111 the tolerance is 11.1,
    # so 122 (11 away) is held and 123 (12 away) goes, after 122.
    assert run(settings, [100, 109, 110, 111, 122, 123]) == [(0, 100), (2, 110), (3, 111), (4, 122), (5, 123)]


def test_percentage_tolerance_from_zero_sends_any_move() -> None:
    settings = OptimizedCollection(tolerance=50, tolerance_type=ToleranceType.PERCENTAGE, maximum_sample_separation=10)
    assert run(settings, [0, 0, 0.001, 0.001]) == [(0, 0), (1, 0), (2, 0.001)]


def test_maximum_sample_separation_sends_one_sample_in_every_n_even_when_flat() -> None:
    settings = OptimizedCollection(tolerance=5, tolerance_type=ToleranceType.ABSOLUTE, maximum_sample_separation=4)
    assert run(settings, [7] * 10) == [(0, 7), (4, 7), (8, 7)]


def test_separation_restarts_after_a_step() -> None:
    settings = OptimizedCollection(tolerance=5, tolerance_type=ToleranceType.ABSOLUTE, maximum_sample_separation=3)
    # 20 at index 2 is a step (11 goes first); the separation counts again from there: 20 at 5 is the third after.
    assert run(settings, [10, 11, 20, 20, 21, 20, 20]) == [(0, 10), (1, 11), (2, 20), (5, 20)]


def test_separation_of_one_sends_everything() -> None:
    settings = OptimizedCollection(tolerance=100, tolerance_type=ToleranceType.ABSOLUTE, maximum_sample_separation=1)
    assert run(settings, [1, 2, 3]) == [(0, 1), (1, 2), (2, 3)]


def test_a_drop_is_a_move_too() -> None:
    settings = OptimizedCollection(tolerance=1, tolerance_type=ToleranceType.ABSOLUTE, maximum_sample_separation=100)
    assert run(settings, [10, 10.5, 10.2, 3, 3]) == [(0, 10), (2, 10.2), (3, 3)]


def test_example_pack_processor_rule_sequence() -> None:
    # examples/management-pack-linux.yaml: processor-time, 5 % tolerance, separation 4.
    settings = OptimizedCollection(tolerance=5, tolerance_type=ToleranceType.PERCENTAGE, maximum_sample_separation=4)
    values = [40, 41, 39, 40, 42, 60, 61, 62, 30]
    assert run(settings, values) == [(0, 40), (4, 42), (5, 60), (7, 62), (8, 30)]
