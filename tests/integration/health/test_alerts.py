"""Alerts on real PostgreSQL: repeat counts, auto-resolution, storms, lifecycle, and `opsmgr alerts` for people."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
from click.testing import CliRunner

from opsmgr.cli import main
from opsmgr.db.alert_lifecycle import SubjectKind, set_resolution_state, short_id
from opsmgr.db.alert_storms import StormPolicy, group_alert_storms
from opsmgr.db.model import Alert, AlertSeverity, HealthState, Lane, ResolutionState, StateChange
from opsmgr.db.writer import write_operational
from tests.integration.db.conftest import Databases
from tests.unit.db.builders import batch

KEY = ("Linux.FileSystem:/data", "FreeSpaceMonitor")


def raised(at: datetime, state: ResolutionState = ResolutionState.NEW) -> Alert:
    return Alert(at, *KEY, "Low disk space", "/data is full", AlertSeverity.WARNING, resolution_state=state)


async def alerts(conn: asyncpg.Connection) -> list[tuple[int, int]]:
    rows = await conn.fetch("SELECT resolution_state, repeat_count FROM alerts ORDER BY raised_at")
    return [(r["resolution_state"], r["repeat_count"]) for r in rows]


async def test_duplicates_count_as_repeats_until_resolved_then_a_new_alert_opens(databases: Databases) -> None:
    op, now = databases.operational, datetime.now(UTC)
    items = [raised(now), raised(now + timedelta(seconds=1)), raised(now + timedelta(seconds=2))]
    await write_operational(op, batch(0, Lane.PRIORITY, items))
    await write_operational(op, batch(0, Lane.PRIORITY, items))  # a replay counts nothing twice
    assert await alerts(op) == [(0, 2)]
    await write_operational(op, batch(1, Lane.PRIORITY, [raised(now + timedelta(seconds=3), ResolutionState.RESOLVED),
                                                         raised(now + timedelta(seconds=4))]))
    assert await alerts(op) == [(254, 2), (0, 0)]


async def test_a_monitor_back_to_healthy_resolves_its_alert_but_an_older_change_does_not(
        databases: Databases) -> None:
    op, now = databases.operational, datetime.now(UTC)
    await write_operational(op, batch(0, Lane.PRIORITY, [raised(now)]))
    old = StateChange(now - timedelta(minutes=5), KEY[0], KEY[1], HealthState.CRITICAL, HealthState.HEALTHY)
    await write_operational(op, batch(1, Lane.PRIORITY, [old]))
    assert await alerts(op) == [(0, 0)]
    back = StateChange(now + timedelta(minutes=1), KEY[0], KEY[1], HealthState.CRITICAL, HealthState.HEALTHY)
    await write_operational(op, batch(2, Lane.PRIORITY, [back]))
    assert await alerts(op) == [(254, 0)]
    assert await op.fetchval("SELECT resolved_at FROM alerts") == back.changed_at


async def test_a_burst_across_agents_becomes_one_storm_listing_every_agent(databases: Databases) -> None:
    op, now = databases.operational, datetime.now(UTC)
    for n in range(4):
        await write_operational(op, batch(0, Lane.PRIORITY, [raised(now + timedelta(seconds=n))],
                                          agent=f"web{n}.contoso.test"))
    policy = StormPolicy(threshold_agents=3, window=timedelta(minutes=5))
    report = await group_alert_storms(op, policy, now=now + timedelta(seconds=10))
    assert (report.opened, report.joined) == (1, 4)
    late = raised(now + timedelta(seconds=20))
    await write_operational(op, batch(0, Lane.PRIORITY, [late], agent="web9.contoso.test"))
    assert (await group_alert_storms(op, policy, now=now + timedelta(seconds=30))).joined == 1
    agents = await op.fetch("SELECT a.agent FROM alerts a JOIN alert_storms s USING (storm_id) ORDER BY agent")
    assert [a["agent"] for a in agents] == [*(f"web{n}.contoso.test" for n in range(4)), "web9.contoso.test"]
    # Every member resolved on its own: the storm resolves by itself.
    await op.execute("UPDATE alerts SET resolution_state = 254, resolved_at = now()")
    assert (await group_alert_storms(op, policy, now=now + timedelta(seconds=40))).resolved == 1


async def test_acknowledging_a_storm_acknowledges_its_active_members(databases: Databases) -> None:
    op, now = databases.operational, datetime.now(UTC)
    for n in range(3):
        await write_operational(op, batch(0, Lane.PRIORITY, [raised(now)], agent=f"db{n}.contoso.test"))
    await group_alert_storms(op, StormPolicy(threshold_agents=3), now=now)
    storm_id = await op.fetchval("SELECT storm_id FROM alert_storms")
    result = await set_resolution_state(op, SubjectKind.STORM, storm_id, int(ResolutionState.ACKNOWLEDGED))
    assert result.members_changed == 3
    assert {r[0] for r in await alerts(op)} == {249}


def test_people_list_acknowledge_resolve_and_close_alerts_with_clear_errors(databases: Databases) -> None:
    # Synchronous: the CLI runs its own event loop; the fixture's connections are not used here.
    dsn = ["--operational-dsn", databases.operational_dsn]
    runner = CliRunner()

    async def seed() -> str:
        conn = await asyncpg.connect(databases.operational_dsn)
        try:
            await write_operational(conn, batch(0, Lane.PRIORITY, [raised(datetime.now(UTC))]))
            return short_id(await conn.fetchval("SELECT alert_id FROM alerts"))
        finally:
            await conn.close()

    ident = asyncio.run(seed())
    listed = runner.invoke(main, ["alerts", "list", *dsn])
    assert listed.exit_code == 0, listed.output
    assert ident in listed.output and "Low disk space" in listed.output and "New (0)" in listed.output
    assert "Acknowledged (249)" not in listed.output
    ack = runner.invoke(main, ["alerts", "ack", *dsn, ident])
    assert ack.exit_code == 0 and f"alert {ident}: New (0) -> Acknowledged (249)" in ack.output
    assert "is already Acknowledged (249)" in runner.invoke(main, ["alerts", "ack", *dsn, ident]).output
    assert runner.invoke(main, ["alerts", "close", *dsn, ident]).exit_code == 0
    refused = runner.invoke(main, ["alerts", "resolve", *dsn, ident])
    assert refused.exit_code == 1
    assert f"alert {ident} is Closed (255), which is final" in refused.output
    unknown = runner.invoke(main, ["alerts", "ack", *dsn, "deadbeef"])
    assert unknown.exit_code == 1
    assert "no alert or storm has id 'deadbeef': list them with `opsmgr alerts list --all`" in unknown.output
    garbage = runner.invoke(main, ["alerts", "ack", *dsn, "not-an-id"])
    assert garbage.exit_code == 1 and "alert id 'not-an-id' is not an id" in garbage.output
    assert "no active alerts" in runner.invoke(main, ["alerts", "list", *dsn]).output
    assert "Closed (255)" in runner.invoke(main, ["alerts", "list", "--all", *dsn]).output
