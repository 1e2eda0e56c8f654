"""A batch that no database may accept is refused when built, with the field, the value and the fix."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from opsmgr.db.model import (
    Batch,
    DiscoveryItem,
    InvalidBatch,
    Lane,
    PerformanceSample,
    ResolutionState,
    Retention,
)
from tests.unit.db.builders import AGENT, NOON, alert, batch, discovery, event, sample, state_change


def test_well_formed_batches_of_both_lanes_are_accepted() -> None:
    assert batch(0, Lane.BULK, [event(1), sample(2)]).id.seq == 0
    assert batch(1, Lane.PRIORITY, [alert(1), state_change(2), discovery(3)]).kinds() == {"alert", "state",
                                                                                          "discovery"}


def test_a_batch_of_item_subclasses_still_names_its_kinds() -> None:
    # kinds() reads the kind from the exact item types; an item type's subclass (which a batch accepts) must not
    # make a batch look empty, or it would be routed to the operational DB alone.
    class TaggedSample(PerformanceSample):
        pass

    tagged = TaggedSample(*sample(1))
    assert batch(0, Lane.BULK, [tagged, event(2)]).kinds() == {"performance", "event"}


def test_alert_in_the_bulk_lane_names_the_item_and_the_right_lane() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.items\[1\] is alert data in the bulk lane: send alert items "
                                           r"in the priority lane"):
        batch(0, Lane.BULK, [event(1), alert(2)])


def test_event_in_the_priority_lane_is_refused() -> None:
    with pytest.raises(InvalidBatch, match=r"send event items in the bulk lane"):
        batch(0, Lane.PRIORITY, [event(1)])


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.items\[0\].timestamp 2026-11-25T12:00:00 has no time zone"):
        batch(0, Lane.BULK, [event(1, at=datetime(2026, 11, 25, 12))])


def test_negative_sequence_and_empty_agent_are_refused() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.seq is -1"):
        batch(-1, Lane.BULK, [])
    with pytest.raises(InvalidBatch, match=r"batch.agent is empty"):
        batch(0, Lane.BULK, [], agent="")


def test_epoch_must_be_a_uuid() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.epoch is 'abc'"):
        Batch(AGENT, "abc", 0, Lane.BULK, ())  # type: ignore[arg-type]


def test_lane_must_be_a_lane() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.lane is 'urgent': use 'priority' or 'bulk'"):
        Batch(AGENT, uuid.uuid4(), 0, "urgent", ())  # type: ignore[arg-type]


def test_agents_cannot_acknowledge_their_own_alerts() -> None:
    with pytest.raises(InvalidBatch, match=r"resolution_state is 249: an agent raises alerts as New \(0\)"):
        batch(0, Lane.PRIORITY, [alert(1, state=ResolutionState.ACKNOWLEDGED)])


def test_empty_object_key_is_refused() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.items\[0\].object_key is empty"):
        batch(0, Lane.PRIORITY, [DiscoveryItem(NOON, "", "Linux.Computer", "web01")])


def test_retention_defaults_are_operations_managers() -> None:
    retention = Retention()
    assert (retention.operational_days, retention.warehouse_raw_days, retention.warehouse_aggregated_days,
            retention.alert_days) == (7, 10, 400, 400)


@pytest.mark.parametrize("field", ["operational_days", "warehouse_raw_days", "alert_days"])
def test_retention_of_zero_days_names_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=f"retention.{field} is 0: give a whole number of days, at least 1"):
        Retention(**{field: 0})


def test_partitions_ahead_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"retention.partitions_ahead_days is 90: give 0 to 31 days"):
        Retention(partitions_ahead_days=90)


def test_empty_object_key_of_a_bulk_item_is_refused() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.items\[1\].object_key is empty"):
        batch(0, Lane.BULK, [sample(1), sample(2)._replace(object_key="")])


def test_a_plain_tuple_shaped_like_an_item_is_not_an_item() -> None:
    with pytest.raises(InvalidBatch, match=r"batch.items\[0\] is a tuple: send Event, PerformanceSample"):
        batch(0, Lane.BULK, [tuple(sample(1))])  # type: ignore[list-item]
