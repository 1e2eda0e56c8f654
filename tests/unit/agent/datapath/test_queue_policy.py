"""The queue's decisions alone: eviction order, batch formation, acknowledgements, send window, health."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsmgr.agent.lanes import Databases, ItemKind, Lane, databases_for
from opsmgr.agent.queue_policy import (
    AckOutcome,
    BatchFate,
    QueuedItem,
    QueueHealth,
    SendWindow,
    apply_ack,
    batch_due,
    choose_evictions,
    eviction_key,
    form_batch,
    lane_to_send,
    percent_used,
    queue_health,
)

BOTH = Databases.OPERATIONAL | Databases.WAREHOUSE

queued_items = st.lists(st.builds(QueuedItem, id=st.integers(0, 10_000), kind=st.sampled_from(ItemKind),
                                  size=st.integers(1, 5_000)), unique_by=lambda item: item.id, max_size=60)


def test_eviction_takes_performance_then_events_then_discovery_then_state_then_alerts() -> None:
    items = [QueuedItem(1, ItemKind.ALERT, 10), QueuedItem(2, ItemKind.STATE, 10), QueuedItem(3, ItemKind.EVENT, 10),
             QueuedItem(4, ItemKind.PERFORMANCE, 10), QueuedItem(5, ItemKind.DISCOVERY, 10),
             QueuedItem(6, ItemKind.PERFORMANCE, 10)]
    order = [item.id for item in sorted(items, key=eviction_key)]
    assert order == [4, 6, 3, 5, 2, 1]


@given(queued_items, st.integers(0, 100_000))
def test_evictions_are_the_shortest_prefix_in_eviction_order_that_frees_enough(items: list[QueuedItem],
                                                                               needed: int) -> None:
    ordered = sorted(items, key=eviction_key)
    chosen = choose_evictions(ordered, needed)
    assert chosen == ordered[:len(chosen)]
    freed = sum(item.size for item in chosen)
    if freed < needed:
        assert chosen == ordered, "stopped early although more was needed"
    else:
        assert sum(item.size for item in chosen[:-1]) < needed or not chosen, "evicted more than needed"


@given(queued_items, st.integers(1, 50), st.integers(1, 20_000))
def test_a_batch_is_the_oldest_items_within_the_limits_and_never_empty(items: list[QueuedItem], max_items: int,
                                                                       max_bytes: int) -> None:
    pending = sorted(items, key=lambda item: item.id)
    batch = form_batch(pending, max_items=max_items, max_bytes=max_bytes)
    assert batch == pending[:len(batch)]
    if pending:
        assert batch, "a pending item must always leave, even one larger than a message"
        assert len(batch) <= max_items
        assert len(batch) == 1 or sum(item.size for item in batch) <= max_bytes


def test_priority_batches_never_linger_and_bulk_waits_to_fill() -> None:
    assert batch_due(Lane.PRIORITY, 1, 0.0, max_items=5000, linger_seconds=1.0)
    assert not batch_due(Lane.BULK, 10, 0.2, max_items=5000, linger_seconds=1.0)
    assert batch_due(Lane.BULK, 10, 1.0, max_items=5000, linger_seconds=1.0)
    assert batch_due(Lane.BULK, 5000, 0.0, max_items=5000, linger_seconds=1.0)
    assert not batch_due(Lane.PRIORITY, 0, 9.0, max_items=5000, linger_seconds=1.0)


def test_a_bulk_batch_leaves_only_after_both_databases_acknowledged() -> None:
    first = apply_ack(BOTH, Databases(0), Databases.OPERATIONAL, AckOutcome.COMMITTED)
    assert first.fate is BatchFate.KEEP
    second = apply_ack(BOTH, first.acked, Databases.WAREHOUSE, AckOutcome.ALREADY_COMMITTED)
    assert second.fate is BatchFate.DELIVERED


def test_an_alert_batch_leaves_on_the_operational_ack_alone() -> None:
    needed = databases_for([ItemKind.ALERT, ItemKind.DISCOVERY])
    assert needed == Databases.OPERATIONAL
    assert apply_ack(needed, Databases(0), Databases.OPERATIONAL, AckOutcome.COMMITTED).fate is BatchFate.DELIVERED


def test_state_goes_to_both_databases_like_the_server_routes_it() -> None:
    assert databases_for([ItemKind.STATE]) == BOTH


def test_a_rejection_drops_the_batch_and_a_deferral_keeps_it() -> None:
    assert apply_ack(BOTH, Databases(0), BOTH, AckOutcome.REJECTED).fate is BatchFate.REJECTED
    deferred = apply_ack(BOTH, Databases.OPERATIONAL, Databases.WAREHOUSE, AckOutcome.DEFERRED)
    assert deferred.fate is BatchFate.DEFERRED and deferred.acked == Databases.OPERATIONAL


@given(st.lists(st.tuples(st.sampled_from([Databases.OPERATIONAL, Databases.WAREHOUSE]),
                          st.sampled_from([AckOutcome.COMMITTED, AckOutcome.ALREADY_COMMITTED, AckOutcome.DEFERRED])),
                max_size=8))
def test_a_batch_is_delivered_exactly_when_every_needed_database_settled(
        acks: list[tuple[Databases, AckOutcome]]) -> None:
    acked = Databases(0)
    fate = BatchFate.KEEP
    for database, outcome in acks:
        decision = apply_ack(BOTH, acked, database, outcome)
        acked, fate = decision.acked, decision.fate
        if fate is BatchFate.DELIVERED:
            break
    settled = {d for d, o in acks if o is not AckOutcome.DEFERRED}
    assert (fate is BatchFate.DELIVERED) == (settled == {Databases.OPERATIONAL, Databases.WAREHOUSE})


def test_bulk_cannot_take_the_slots_reserved_for_priority() -> None:
    window = SendWindow(batches=4, reserved_for_priority=1)
    assert lane_to_send(window, {Lane.BULK: 3}, {Lane.BULK}) is None
    assert lane_to_send(window, {Lane.BULK: 3}, {Lane.BULK, Lane.PRIORITY}) is Lane.PRIORITY
    assert lane_to_send(window, {Lane.BULK: 2}, {Lane.BULK, Lane.PRIORITY}) is Lane.PRIORITY
    assert lane_to_send(window, {Lane.BULK: 2}, {Lane.BULK}) is Lane.BULK
    assert lane_to_send(window, {Lane.BULK: 3, Lane.PRIORITY: 1}, {Lane.PRIORITY}) is None


def test_a_window_must_leave_room_for_bulk() -> None:
    with pytest.raises(ValueError, match="reserved_for_priority"):
        SendWindow(batches=2, reserved_for_priority=2)


@pytest.mark.parametrize(("size", "health"), [(0, QueueHealth.HEALTHY), (49, QueueHealth.HEALTHY),
                                              (50, QueueHealth.WARNING), (59, QueueHealth.WARNING),
                                              (60, QueueHealth.CRITICAL), (100, QueueHealth.CRITICAL)])
def test_send_queue_percent_used_warns_at_50_and_is_critical_at_60(size: int, health: QueueHealth) -> None:
    assert queue_health(percent_used(size, 100)) is health
