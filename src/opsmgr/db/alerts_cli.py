"""`opsmgr alerts`: list alerts and storms, and acknowledge, resolve or close them, against the operational DB."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import click

from opsmgr.db.alert_lifecycle import (
    AlertStateError,
    StateChangeResult,
    resolve_subject_id,
    set_resolution_state,
    short_id,
    state_label,
)
from opsmgr.db.cli import check_dsn, redact_dsn
from opsmgr.db.model import AlertPriority, AlertSeverity, ResolutionState

T = TypeVar("T")

DSN_OPTION = click.option("--operational-dsn", envvar="OPSMGR_OPERATIONAL_DSN", required=True, metavar="URL",
                          help="postgresql:// URL of the operational database (or $OPSMGR_OPERATIONAL_DSN).")


@click.group("alerts")
def alerts() -> None:
    """List alerts and alert storms; acknowledge, resolve or close them."""


def _run(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    check_dsn("--operational-dsn", dsn)

    async def session() -> T:
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise click.ClickException(
                f"cannot connect to the operational database {redact_dsn(dsn)} (--operational-dsn): {exc}; check "
                "the host, port, credentials and database name") from exc
        try:
            return await work(conn)
        except AlertStateError as exc:
            raise click.ClickException(str(exc)) from exc
        except asyncpg.UndefinedTableError as exc:
            raise click.ClickException(f"{redact_dsn(dsn)} has no alert tables ({exc}): run `opsmgr db migrate "
                                       "--operational-dsn ...` first") from exc
        finally:
            await conn.close()

    return asyncio.run(session())


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _row(ident: str, record: asyncpg.Record, *, repeats: Any, who: str, raised: datetime) -> str:
    severity, priority, state, name = (record["severity"], record["priority"], record["resolution_state"],
                                       record["name"])
    return (f"{ident:<10} {AlertSeverity(severity).name.title():<11} {AlertPriority(priority).name.title():<8} "
            f"{state_label(state):<20} {repeats!s:>6}  {who:<32} {name}  ({_when(raised)})")


@alerts.command("list")
@DSN_OPTION
@click.option("--all", "show_all", is_flag=True, help="Include resolved and closed alerts.")
@click.option("--agent", default=None, metavar="FQDN", help="Only this agent's alerts.")
@click.option("--limit", type=click.IntRange(1, 10000), default=200, show_default=True, help="At most this many.")
def list_alerts(operational_dsn: str, show_all: bool, agent: str | None, limit: int) -> None:
    """Active alerts (all with --all), newest first; a storm is one line with each of its agents under it."""

    async def work(conn: asyncpg.Connection) -> list[str]:
        active = "" if show_all else "AND resolution_state < 254"
        storms = await conn.fetch(
            f"""SELECT storm_id, source, name, severity, priority, resolution_state, opened_at FROM alert_storms
                WHERE true {active} ORDER BY opened_at DESC LIMIT $1""", limit)  # noqa: S608
        members = await conn.fetch(
            f"""SELECT storm_id, alert_id, agent, resolution_state, repeat_count FROM alerts
                WHERE storm_id = ANY($1::uuid[]) AND ($2::text IS NULL OR agent = $2) {active}
                ORDER BY agent""", [s["storm_id"] for s in storms], agent)  # noqa: S608
        singles = await conn.fetch(
            f"""SELECT alert_id, agent, name, severity, priority, resolution_state, repeat_count, raised_at
                FROM alerts WHERE storm_id IS NULL AND ($1::text IS NULL OR agent = $1) {active}
                ORDER BY raised_at DESC LIMIT $2""", agent, limit)  # noqa: S608
        lines = [f"{'ID':<10} {'SEVERITY':<11} {'PRIORITY':<8} {'STATE':<20} {'REPEAT':>6}  {'AGENT':<32} NAME"]
        for storm in storms:
            listed = [m for m in members if m["storm_id"] == storm["storm_id"]]
            if agent is not None and not listed:
                continue
            lines.append(_row(short_id(storm["storm_id"]), storm, repeats="-",
                              who=f"storm: {len(listed)} agents", raised=storm["opened_at"]))
            lines += [f"  {short_id(m['alert_id']):<10} {'':<20} {state_label(m['resolution_state']):<20} "
                      f"{m['repeat_count']:>6}  {m['agent']}" for m in listed]
        lines += [_row(short_id(a["alert_id"]), a, repeats=a["repeat_count"], who=a["agent"], raised=a["raised_at"])
                  for a in singles]
        if len(lines) == 1:
            lines.append("no alerts" if show_all else "no active alerts (--all shows resolved and closed ones)")
        return lines

    for line in _run(operational_dsn, work):
        click.echo(line)


def _change(dsn: str, alert_id: str, target: ResolutionState) -> None:
    async def work(conn: asyncpg.Connection) -> StateChangeResult:
        kind, subject_id = await resolve_subject_id(conn, alert_id)
        return await set_resolution_state(conn, kind, subject_id, int(target))

    result = _run(dsn, work)
    what = f"{result.kind} {short_id(result.subject_id)}"
    if not result.changed:
        click.echo(f"{what} is already {state_label(result.after)}")
        return
    members = f" with {result.members_changed} active member alerts" if result.members_changed else ""
    click.echo(f"{what}{members}: {state_label(result.before)} -> {state_label(result.after)}")


ALERT_ID = click.argument("alert_id", metavar="ID")


@alerts.command("ack")
@DSN_OPTION
@ALERT_ID
def ack(operational_dsn: str, alert_id: str) -> None:
    """Acknowledge (249) an alert or a storm and its active members; ID as `list` prints it."""
    _change(operational_dsn, alert_id, ResolutionState.ACKNOWLEDGED)


@alerts.command("resolve")
@DSN_OPTION
@ALERT_ID
def resolve(operational_dsn: str, alert_id: str) -> None:
    """Resolve (254) an alert or a storm and its active members."""
    _change(operational_dsn, alert_id, ResolutionState.RESOLVED)


@alerts.command("close")
@DSN_OPTION
@ALERT_ID
def close(operational_dsn: str, alert_id: str) -> None:
    """Close (255) an alert or a storm and its active members; closed is final."""
    _change(operational_dsn, alert_id, ResolutionState.CLOSED)
