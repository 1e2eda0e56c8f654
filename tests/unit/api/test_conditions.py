"""Conditions follow the Kubernetes conventions: keyed by type, transition time moves only with the status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from opsmgr.api.conditions import (
    READY,
    Condition,
    ConditionStatus,
    ResourceStatus,
    find_condition,
    is_condition_true,
    set_condition,
    summarize_ready,
)
from opsmgr.api.management_group import ManagementGroupConditionType as T

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)


def test_condition_of_takes_a_bool_and_drops_sub_second_time() -> None:
    condition = Condition.of(T.DATABASES_READY, True, "Migrated", "Schema 7 applied.", generation=2,
                             now=T0.replace(microsecond=123456))
    assert condition.status is ConditionStatus.TRUE
    assert condition.last_transition_time == T0
    assert condition.to_dict() == {"type": "DatabasesReady", "status": "True", "reason": "Migrated",
                                   "message": "Schema 7 applied.", "lastTransitionTime": "2026-03-01T12:00:00Z",
                                   "observedGeneration": 2}


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    first = set_condition([], Condition.of(T.SERVERS_READY, False, "Starting", "0 of 2 ready", now=T0))
    second = set_condition(first, Condition.of(T.SERVERS_READY, False, "Starting", "1 of 2 ready", now=LATER))
    assert len(second) == 1
    assert second[0].message == "1 of 2 ready"
    assert second[0].last_transition_time == T0


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    first = set_condition([], Condition.of(T.SERVERS_READY, False, "Starting", now=T0))
    second = set_condition(first, Condition.of(T.SERVERS_READY, True, "AllReady", now=LATER))
    assert second[0].last_transition_time == LATER
    assert is_condition_true(second, T.SERVERS_READY)


def test_set_condition_leaves_other_types_in_place() -> None:
    conditions = set_condition([], Condition.of(T.DATABASES_READY, True, "Migrated", now=T0))
    conditions = set_condition(conditions, Condition.of(T.CERTIFICATES_READY, True, "Issued", now=T0))
    conditions = set_condition(conditions, Condition.of(T.DATABASES_READY, False, "Unreachable", now=LATER))
    assert [c.type for c in conditions] == ["DatabasesReady", "CertificatesReady"]
    assert find_condition(conditions, T.CERTIFICATES_READY) is conditions[1]


def test_same_decision_ignores_transition_time() -> None:
    assert Condition.of(READY, True, "AllReady", now=T0).same_decision(Condition.of(READY, True, "AllReady", now=LATER))
    assert not Condition.of(READY, True, "AllReady").same_decision(Condition.of(READY, True, "AllReady", generation=2))


def test_ready_is_true_when_every_required_condition_is() -> None:
    required = [T.DATABASES_READY, T.CERTIFICATES_READY, T.SERVERS_READY]
    conditions = [Condition.of(t, True, "Done", now=T0) for t in required]
    ready = summarize_ready(conditions, required, generation=4, now=LATER)
    assert (ready.type, ready.status, ready.reason, ready.observed_generation) == (READY, "True", "AllReady", 4)


def test_ready_names_the_first_blocking_condition() -> None:
    required = [T.DATABASES_READY, T.CERTIFICATES_READY, T.SERVERS_READY]
    conditions = [
        Condition.of(T.DATABASES_READY, True, "Migrated", now=T0),
        Condition.of(T.CERTIFICATES_READY, False, "InvalidCA", "tls.crt is not a CA certificate", now=T0),
    ]
    ready = summarize_ready(conditions, required, now=LATER)
    assert ready.status is ConditionStatus.FALSE
    assert ready.reason == "InvalidCA"
    assert ready.message == ("CertificatesReady: tls.crt is not a CA certificate; "
                             "ServersReady has not been decided yet")


def test_ready_reason_for_a_missing_condition_is_unknown_of_that_type() -> None:
    ready = summarize_ready([], [T.SERVERS_READY])
    assert ready.reason == "ServersReadyUnknown"


def test_status_exposes_ready_and_lookup() -> None:
    status = ResourceStatus(conditions=[Condition.of(READY, True, "AllReady")])
    assert status.ready
    assert status.condition(READY) is not None
    assert not ResourceStatus().ready


@pytest.mark.parametrize("reason", ["not camel case", "", "1Starts"])
def test_reason_must_be_one_camel_case_word(reason: str) -> None:
    with pytest.raises(ValidationError, match="reason"):
        Condition.of(READY, False, reason)


def test_condition_types_are_unique_in_a_status() -> None:
    duplicate = [Condition.of(READY, True, "AllReady"), Condition.of(READY, False, "Broken")]
    with pytest.raises(ValidationError, match=r"conditions\[1\]: duplicate entry 'Ready'"):
        ResourceStatus(conditions=duplicate)
