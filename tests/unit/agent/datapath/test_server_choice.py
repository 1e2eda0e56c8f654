"""Operations Manager's failover rule and OpenTelemetry's backoff, as pure state transitions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from opsmgr.agent.server_choice import BackoffPolicy, ServerChoice

NO_JITTER = BackoffPolicy(jitter=0.0)


def test_backoff_starts_at_5_s_grows_by_half_and_stops_at_30_s() -> None:
    assert [round(NO_JITTER.delay(n, 0.5), 2) for n in range(1, 8)] == [5.0, 7.5, 11.25, 16.88, 25.31, 30.0, 30.0]


@given(st.integers(1, 50), st.floats(0, 1, exclude_max=True))
def test_jittered_backoff_stays_within_half_either_side_and_the_cap(failures: int, random: float) -> None:
    policy = BackoffPolicy()
    base = min(30.0, 5.0 * 1.5 ** (failures - 1))
    assert 0.5 * base <= policy.delay(failures, random) <= min(30.0, 1.5 * base)


def test_agent_fails_over_after_three_primary_failures() -> None:
    choice = ServerChoice("a:5723", ("b:5723", "c:5723"))
    tried = []
    for _ in range(3):
        choice, attempt = choice.failed(NO_JITTER, 0.5)
        tried.append((attempt.server, attempt.delay_seconds))
    assert tried == [("a:5723", 5.0), ("a:5723", 7.5), ("b:5723", 0.0)]


def test_failed_failovers_are_tried_in_turn_then_the_primary_again() -> None:
    choice = ServerChoice("a", ("b", "c"), current="b")
    choice, attempt = choice.failed(NO_JITTER, 0.5)
    assert attempt.server == "c"
    choice, attempt = choice.failed(NO_JITTER, 0.5)
    assert attempt.server == "a" and choice.primary_failures == 0


def test_no_failovers_means_retrying_the_primary_for_ever() -> None:
    choice = ServerChoice("a")
    for _ in range(10):
        choice, attempt = choice.failed(NO_JITTER, 0.5)
        assert attempt.server == "a"


def test_a_connection_resets_the_backoff() -> None:
    choice = ServerChoice("a", ("b",))
    choice, _ = choice.failed(NO_JITTER, 0.5)
    choice, _ = choice.failed(NO_JITTER, 0.5)
    choice = choice.connected()
    _, attempt = choice.failed(NO_JITTER, 0.5)
    assert attempt.delay_seconds == 5.0


def test_fail_back_returns_to_the_primary_with_fresh_attempts() -> None:
    choice = ServerChoice("a", ("b",), current="b", primary_failures=3).fail_back()
    assert choice.current == "a" and choice.primary_failures == 0


def test_redirect_makes_the_named_server_primary() -> None:
    choice = ServerChoice("a", ("b",)).redirected("z:5723", ("y:5723",))
    assert (choice.primary, choice.current, choice.failovers) == ("z:5723", "z:5723", ("y:5723",))


def test_welcome_failovers_replace_the_configured_ones_but_never_list_the_primary() -> None:
    assert ServerChoice("a", ("b",)).with_failovers(("a", "c")).failovers == ("c",)
    assert ServerChoice("a", ("b",)).with_failovers(()).failovers == ("b",)
