"""Routing of item kinds to databases, and what a batch becomes in each one."""

from __future__ import annotations

from datetime import date, timedelta

from opsmgr.db.model import Database, DropReason, ItemKind, Lane, ResolutionState, Retention
from opsmgr.db.routing import ROUTES, TABLE_COLUMNS, AlertChange, alert_runs, databases_for, plan_write
from tests.unit.db.builders import NOON, alert, batch, discovery, event, sample, state_change

OPERATIONAL_ONLY = frozenset({Database.OPERATIONAL})
BOTH = frozenset({Database.OPERATIONAL, Database.WAREHOUSE})


def test_alerts_and_discovery_go_to_operational_only_and_the_rest_to_both() -> None:
    assert ROUTES == {ItemKind.ALERT: OPERATIONAL_ONLY, ItemKind.DISCOVERY: OPERATIONAL_ONLY,
                      ItemKind.EVENT: BOTH, ItemKind.PERFORMANCE: BOTH, ItemKind.STATE: BOTH}


def test_a_batch_belongs_to_every_database_one_of_its_kinds_goes_to() -> None:
    assert databases_for(batch(0, Lane.BULK, [event(1)])) == BOTH
    assert databases_for(batch(0, Lane.PRIORITY, [alert(1), discovery(2)])) == OPERATIONAL_ONLY
    assert databases_for(batch(0, Lane.PRIORITY, [alert(1), state_change(2)])) == BOTH


def test_an_empty_batch_is_acknowledged_by_the_operational_db() -> None:
    assert databases_for(batch(0, Lane.BULK, [])) == OPERATIONAL_ONLY


def test_warehouse_plan_leaves_alerts_and_discovery_to_the_operational_db() -> None:
    priority = batch(3, Lane.PRIORITY, [alert(1), state_change(2), discovery(3)])
    operational = plan_write(priority, Database.OPERATIONAL, Retention(), NOON)
    warehouse = plan_write(priority, Database.WAREHOUSE, Retention(), NOON)
    assert operational.written == {ItemKind.ALERT: 1, ItemKind.STATE: 1, ItemKind.DISCOVERY: 1}
    assert warehouse.written == {ItemKind.STATE: 1}
    assert not warehouse.alerts
    assert not warehouse.discovery


def test_rows_follow_the_table_columns_and_carry_their_place_in_the_batch() -> None:
    plan = plan_write(batch(5, Lane.BULK, [event(1), sample(2), event(3)]), Database.OPERATIONAL, Retention(), NOON)
    events = plan.rows["events"]
    assert [len(row) for row in events] == [len(TABLE_COLUMNS["events"])] * 2
    assert [row[-3:] for row in events] == [(batch(0, Lane.BULK, []).epoch, 5, 0),
                                           (batch(0, Lane.BULK, []).epoch, 5, 2)]
    assert dict(zip(TABLE_COLUMNS["performance_samples"], plan.rows["performance_samples"][0], strict=True))[
        "value"] == 2.0


def test_each_time_series_column_holds_the_item_field_of_its_name() -> None:
    for lane, item, table in ((Lane.BULK, event(1), "events"), (Lane.BULK, sample(2), "performance_samples"),
                              (Lane.PRIORITY, state_change(3), "state_changes")):
        row = plan_write(batch(5, lane, [item]), Database.OPERATIONAL, Retention(), NOON).rows[table][0]
        columns = dict(zip(TABLE_COLUMNS[table], row, strict=True))
        assert {name: columns[name] for name in item._fields} == item._asdict()
        assert columns["agent"] == batch(0, lane, []).agent


def test_late_data_is_counted_per_kind_and_reason_and_kept_out_of_the_rows() -> None:
    old = NOON - timedelta(days=8)
    future = NOON + timedelta(days=5)
    plan = plan_write(batch(0, Lane.BULK, [event(1, old), event(2, old), sample(3, future), sample(4)]),
                      Database.OPERATIONAL, Retention(), NOON)
    assert plan.dropped == {(ItemKind.EVENT, DropReason.BEYOND_RETENTION): 2,
                            (ItemKind.PERFORMANCE, DropReason.AHEAD_OF_CLOCK): 1}
    assert plan.written == {ItemKind.PERFORMANCE: 1}
    assert (plan.items_written, plan.items_dropped) == (1, 3)
    assert "events" not in plan.rows


def test_the_warehouse_keeps_raw_data_longer_than_the_operational_db() -> None:
    nine_days_old = batch(0, Lane.BULK, [event(1, NOON - timedelta(days=9))])
    assert plan_write(nine_days_old, Database.OPERATIONAL, Retention(), NOON).items_dropped == 1
    assert plan_write(nine_days_old, Database.WAREHOUSE, Retention(), NOON).items_written == 1


def test_plan_names_the_partitions_its_rows_need() -> None:
    yesterday = NOON - timedelta(days=1)
    plan = plan_write(batch(0, Lane.PRIORITY, [state_change(1, yesterday), state_change(2), alert(3)]),
                      Database.OPERATIONAL, Retention(), NOON)
    assert plan.partitions == {("state_changes", date(2026, 11, 24)), ("state_changes", date(2026, 11, 25))}


def test_alert_runs_keep_the_agents_order_of_raises_and_resolutions() -> None:
    raised, resolved, again = alert(1), alert(1, state=ResolutionState.RESOLVED), alert(1)
    closed = alert(2, state=ResolutionState.CLOSED)
    assert alert_runs([raised, resolved, closed, again]) == (
        (AlertChange.RAISE, (raised,)), (AlertChange.RESOLVE, (resolved, closed)), (AlertChange.RAISE, (again,)))
