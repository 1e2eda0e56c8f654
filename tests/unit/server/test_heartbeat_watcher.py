"""The health service watcher raises what Operations Manager raises, once, and resolves it when heartbeats return."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from opsmgr.server.heartbeat_watcher import (
    FAILED_TO_CONNECT,
    HEARTBEAT_FAILURE,
    AlertRaised,
    AlertResolved,
    HeartbeatStatus,
    HeartbeatWatcher,
    ProbeRequested,
    WatchEvent,
)

AGENT = "web01.contoso.test"


def raised(events: list[WatchEvent]) -> list[str]:
    return [e.name for e in events if isinstance(e, AlertRaised)]


def resolved(events: list[WatchEvent]) -> list[str]:
    return [e.name for e in events if isinstance(e, AlertResolved)]


def run_until(watcher: HeartbeatWatcher, start: float, end: float, step: float = 1.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    now = start
    while now <= end:
        events += watcher.due(now)
        now += step
    return events


def test_heartbeat_failure_is_raised_once_after_four_missed_intervals() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    assert run_until(watcher, 0, 239) == []
    events = watcher.due(240)
    assert raised(events) == [HEARTBEAT_FAILURE]
    assert any(isinstance(e, ProbeRequested) for e in events)
    assert watcher.status(AGENT) is HeartbeatStatus.FAILURE
    assert raised(run_until(watcher, 241, 2000)) == []


def test_regular_heartbeats_never_raise() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    events: list[WatchEvent] = []
    for t in range(60, 3600, 60):
        events += watcher.heartbeat(AGENT, t)
        events += watcher.due(t + 30)
    assert events == []


def test_failed_probe_raises_failed_to_connect_and_both_resolve_when_heartbeats_return() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    watcher.due(240)
    events = watcher.probe_result(AGENT, reachable=False, now=241, detail="connect to 10.1.2.3:22 refused")
    assert raised(events) == [FAILED_TO_CONNECT]
    assert watcher.status(AGENT) is HeartbeatStatus.UNREACHABLE
    events = watcher.heartbeat(AGENT, 500)
    assert sorted(resolved(events)) == sorted([HEARTBEAT_FAILURE, FAILED_TO_CONNECT])
    assert watcher.status(AGENT) is HeartbeatStatus.OK
    assert watcher.open_alerts(AGENT) == frozenset()


def test_reachable_computer_keeps_only_the_heartbeat_failure_and_is_probed_again() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    watcher.due(240)
    assert watcher.probe_result(AGENT, reachable=True, now=241) == []
    assert watcher.open_alerts(AGENT) == {HEARTBEAT_FAILURE}
    later = watcher.due(300)
    assert [e for e in later if isinstance(e, ProbeRequested)], "a failing agent is probed each interval"
    assert raised(watcher.probe_result(AGENT, reachable=False, now=301)) == [FAILED_TO_CONNECT]


def test_goodbye_silences_the_watcher_until_the_agent_speaks_again() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    watcher.goodbye(AGENT, now=10)
    assert run_until(watcher, 0, 5000, step=30) == []
    watcher.heartbeat(AGENT, 5000)
    assert raised(run_until(watcher, 5001, 5300)) == [HEARTBEAT_FAILURE]


def test_maintenance_raises_nothing_and_gives_a_full_window_when_it_ends() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    watcher.set_maintenance(AGENT, True, now=30)
    assert run_until(watcher, 0, 3000, step=30) == []
    watcher.set_maintenance(AGENT, False, now=3000)
    assert run_until(watcher, 3000, 3239) == []
    assert raised(watcher.due(3240)) == [HEARTBEAT_FAILURE]


def test_a_probe_answer_after_the_agent_spoke_again_is_ignored() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    watcher.due(240)
    watcher.heartbeat(AGENT, 245)
    assert watcher.probe_result(AGENT, reachable=False, now=246) == []
    assert watcher.status(AGENT) is HeartbeatStatus.OK


def test_per_agent_interval_and_threshold_override_the_group_defaults() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0, interval=10, threshold=2)
    assert watcher.due(19) == []
    assert raised(watcher.due(20)) == [HEARTBEAT_FAILURE]


def test_taking_over_an_agent_keeps_its_open_alerts_and_resolves_them_later() -> None:
    # The server that watched this agent died; a survivor takes over with what the database knows.
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=1000, last_heartbeat=700, open_alerts=frozenset({HEARTBEAT_FAILURE}))
    assert raised(run_until(watcher, 1000, 1500)) == []  # not raised a second time
    assert resolved(watcher.heartbeat(AGENT, 1600)) == [HEARTBEAT_FAILURE]


def test_taking_over_a_silent_agent_judges_it_by_its_real_last_heartbeat() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=1000, last_heartbeat=900)
    assert raised(watcher.due(1140)) == [HEARTBEAT_FAILURE]


def test_forgotten_agents_raise_nothing() -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    watcher.forget(AGENT)
    assert run_until(watcher, 0, 1000, step=60) == []
    assert AGENT not in watcher


def test_the_heap_holds_one_entry_per_agent_however_many_heartbeats_arrive() -> None:
    watcher = HeartbeatWatcher()
    for n in range(100):
        watcher.watch(f"a{n}.test", now=0)
    for t in range(1, 1000):
        for n in range(100):
            watcher.heartbeat(f"a{n}.test", float(t))
    assert len(watcher._deadlines) == 100


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hb", "tick", "bye", "mnt_on", "mnt_off", "probe_down"]),
                          st.floats(min_value=0.5, max_value=400)), max_size=60))
def test_alerts_are_raised_only_after_the_window_and_never_twice_while_open(
        steps: list[tuple[str, float]]) -> None:
    watcher = HeartbeatWatcher()
    watcher.watch(AGENT, now=0)
    now, last_heartbeat, silenced_since_hb = 0.0, 0.0, False
    in_maintenance = False
    open_alerts: set[str] = set()
    for action, delta in steps:
        now += delta
        if action == "hb":
            events = watcher.heartbeat(AGENT, now)
            last_heartbeat, silenced_since_hb = now, False
        elif action == "bye":
            events = watcher.goodbye(AGENT, now)
            silenced_since_hb = True
        elif action == "mnt_on":
            events = watcher.set_maintenance(AGENT, True, now)
            in_maintenance = True
        elif action == "mnt_off":
            events = watcher.set_maintenance(AGENT, False, now)
            if in_maintenance:
                last_heartbeat = max(last_heartbeat, now)
            in_maintenance = False
        elif action == "probe_down":
            events = watcher.probe_result(AGENT, reachable=False, now=now)
        else:
            events = watcher.due(now)
        for event in events:
            if isinstance(event, AlertRaised):
                assert event.name not in open_alerts, f"{event.name} raised twice"
                assert not in_maintenance and not silenced_since_hb
                if event.name == HEARTBEAT_FAILURE:
                    assert now - last_heartbeat >= 240
                open_alerts.add(event.name)
            elif isinstance(event, AlertResolved):
                open_alerts.discard(event.name)
        assert watcher.open_alerts(AGENT) == open_alerts
