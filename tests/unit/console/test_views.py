"""What the console shows, decided from plain data: health, filters, chart windows, packs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opsmgr.console.views import (
    AgentFilter,
    MonitorState,
    Resolution,
    TimeRange,
    agent_row,
    chart_series,
    filter_agents,
    pack_summary,
    pending,
)

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def body(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"fqdn": f"{name}.contoso.test", "placement": "Host"},
            "status": {"approval": "Approved", "heartbeat": "OK", "connection": "Connected", **status}}


def states(*values: int) -> list[MonitorState]:
    return [MonitorState("Linux.Computer:x", f"m{n}", value, NOW) for n, value in enumerate(values)]


def test_health_is_the_worst_monitor_with_unknown_skipped() -> None:
    assert agent_row(body("a"), states(1, 3, 2, 0)).health == "Critical"
    assert agent_row(body("a"), states(1, 2, 0)).health == "Warning"
    assert agent_row(body("a"), states(1, 0)).health == "Healthy"
    assert agent_row(body("a"), states(0)).health == "Unknown"
    assert agent_row(body("a"), []).health == "Unknown"


def test_health_is_unknown_when_the_states_cannot_be_trusted() -> None:
    assert agent_row(body("a", approval="Pending"), states(3)).health == "Unknown"
    assert agent_row(body("a", heartbeat="Failure"), states(3)).health == "Unknown"
    assert agent_row(body("a", heartbeat="Unreachable"), states(1)).health == "Unknown"
    assert agent_row(body("a", maintenance=True), states(3)).health == "Unknown"


def test_a_new_agent_without_status_is_pending_and_never_connected() -> None:
    row = agent_row({"metadata": {"name": "vm"}, "spec": {"fqdn": "vm.contoso.test"}}, [])
    assert (row.approval, row.connection, row.heartbeat, row.server) == ("Pending", "NeverConnected", "-", "-")
    assert pending([row]) == [row]


def test_queue_and_last_heartbeat_come_from_the_status() -> None:
    row = agent_row(body("a", lastHeartbeatTime="2026-12-01T11:59:00Z", server="ms-0",
                         queue={"percentUsed": 55, "items": 7, "evictions": 2}), [])
    assert (row.queue_percent, row.queue_items, row.evictions, row.server) == (55, 7, 2, "ms-0")
    assert row.last_heartbeat == datetime(2026, 12, 1, 11, 59, tzinfo=UTC)


def test_filters_combine_and_the_worst_agents_come_first() -> None:
    rows = [agent_row(body("web01"), states(3)), agent_row(body("web02"), states(1)),
            agent_row(body("db01", connection="Disconnected"), states(2))]
    assert [r.name for r in filter_agents(rows, AgentFilter())] == ["web01", "db01", "web02"]
    assert [r.name for r in filter_agents(rows, AgentFilter.of({"health": "Healthy"}))] == ["web02"]
    assert [r.name for r in filter_agents(rows, AgentFilter.of({"connection": "Disconnected"}))] == ["db01"]
    assert [r.name for r in filter_agents(rows, AgentFilter.of({"q": "WEB"}))] == ["web01", "web02"]


def test_unknown_filter_values_are_ignored() -> None:
    assert AgentFilter.of({"health": "<script>", "connection": "x"}) == AgentFilter()


def test_time_range_picks_raw_hourly_or_daily_by_span_unless_told() -> None:
    assert TimeRange.of("6h", None, NOW).resolution is Resolution.RAW
    assert TimeRange.of("7d", None, NOW).resolution is Resolution.HOURLY
    assert TimeRange.of("400d", None, NOW).resolution is Resolution.DAILY
    chosen = TimeRange.of("24h", "hourly", NOW)
    assert (chosen.resolution, chosen.start, chosen.end) == (Resolution.HOURLY, NOW - timedelta(hours=24), NOW)
    fallback = TimeRange.of("forever", "weekly", NOW)
    assert (fallback.name, fallback.resolution) == ("6h", Resolution.RAW)


def test_chart_series_is_columnar_unix_seconds() -> None:
    assert chart_series([(NOW, 1.5), (NOW + timedelta(seconds=10), 2.0)]) == [
        [NOW.timestamp(), NOW.timestamp() + 10], [1.5, 2.0]]


def test_pack_summary_lists_rules_monitors_and_tasks() -> None:
    summary = pack_summary({"metadata": {"name": "linux"}, "spec": {
        "managementGroupRef": {"name": "production"}, "version": "1.0.0",
        "rules": [{"name": "memory", "performance": {"object": "Memory", "counter": "% Used Memory"}}],
        "monitors": [{"name": "port", "displayName": "Port", "performance": {"object": "TCP Port"},
                      "direction": "Below"}],
        "tasks": [{"name": "restart", "command": ["systemctl", "restart"]}]}})
    assert summary["rules"] == [{"name": "memory", "kind": "performance", "enabled": True,
                                 "detail": {"object": "Memory", "counter": "% Used Memory"}}]
    assert summary["monitors"][0]["kind"] == "performance"
    assert [t["name"] for t in summary["tasks"]] == ["restart"]
