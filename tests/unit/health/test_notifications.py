"""What notifications say and when they are sent again, without a network."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from opsmgr.api.management_group import AlertSeverity as SeverityName
from opsmgr.api.management_group import NotificationTarget, NotificationType
from opsmgr.db.alert_lifecycle import SubjectKind
from opsmgr.db.model import AlertSeverity
from opsmgr.db.notification_outbox import AlertSnapshot
from opsmgr.server.notifications import (
    DeliveryTarget,
    alertmanager_alert,
    fingerprint,
    notification,
    plan_notifications,
    retry_delay,
    targets_from_spec,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ALERT = AlertSnapshot(SubjectKind.ALERT, uuid.UUID(int=7), 100, ("web01.contoso.test",), "Linux.FileSystem:/data",
                      "FreeSpaceMonitor", "Low disk space", "/data is 95 % full", 1, 1, 0, 0, T0, None, False)
AM = DeliveryTarget("am", NotificationType.ALERTMANAGER, "http://am:9093")
HOOK = DeliveryTarget("hook", NotificationType.WEBHOOK, "http://hook", AlertSeverity.CRITICAL)


def test_a_repeat_changes_nothing_worth_sending_but_a_resolution_does() -> None:
    assert fingerprint(replace(ALERT, repeat_count=9, version=200)) == fingerprint(ALERT)
    assert fingerprint(replace(ALERT, resolution_state=249)) != fingerprint(ALERT)
    assert fingerprint(replace(ALERT, resolution_state=254)).startswith("resolved:")


def test_targets_get_what_meets_their_minimum_severity_and_storm_members_go_through_their_storm() -> None:
    critical = replace(ALERT, subject_id=uuid.UUID(int=8), severity=2)
    member = replace(ALERT, subject_id=uuid.UUID(int=9), in_storm=True)
    planned = plan_notifications([ALERT, critical, member], [AM, HOOK], "contoso")
    assert [(p.target, p.subject_id.int, p.refresh) for p in planned] == [("am", 7, True), ("am", 8, True),
                                                                        ("hook", 8, False)]
    resolved = plan_notifications([replace(ALERT, resolution_state=254, resolved_at=T0)], [AM], "contoso")
    assert resolved[0].refresh is False


def test_alertmanager_gets_labels_annotations_and_times_per_its_v2_api() -> None:
    firing = alertmanager_alert(notification(ALERT, "contoso"), T0, timedelta(minutes=1), "https://console/")
    assert firing == {
        "labels": {"alertname": "Low disk space", "severity": "warning", "managementgroup": "contoso",
                   "alert_id": str(ALERT.subject_id), "source": "FreeSpaceMonitor", "agent": "web01.contoso.test",
                   "object_key": "Linux.FileSystem:/data"},
        "annotations": {"description": "/data is 95 % full", "priority": "Medium", "resolution_state": "0",
                        "repeat_count": "0", "agents": "web01.contoso.test"},
        "startsAt": T0.isoformat(), "endsAt": (T0 + timedelta(minutes=4)).isoformat(),
        "generatorURL": f"https://console/alerts/{ALERT.subject_id}"}
    done = replace(ALERT, resolution_state=254, resolved_at=T0 + timedelta(minutes=3))
    resolved = alertmanager_alert(notification(done, "contoso"), T0 + timedelta(hours=1), timedelta(minutes=1), None)
    assert resolved["endsAt"] == (T0 + timedelta(minutes=3)).isoformat()
    assert "generatorURL" not in resolved


def test_a_storm_lists_every_agent_and_carries_no_agent_label() -> None:
    storm = replace(ALERT, kind=SubjectKind.STORM, agents=("a.test", "b.test", "c.test"), object_key="")
    sent = alertmanager_alert(notification(storm, "contoso"), T0, timedelta(minutes=1), None)
    assert "agent" not in sent["labels"]
    assert sent["annotations"]["agents"] == "a.test, b.test, c.test"


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    delays = [retry_delay(n, 1.0, 30.0, jitter=lambda: 0.5) for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert retry_delay(1, 1.0, 30.0, jitter=lambda: 0.0) == 0.8


def test_targets_come_from_the_management_group_spec_with_their_tokens() -> None:
    spec = [NotificationTarget(name="am", type=NotificationType.ALERTMANAGER, url="http://am:9093",
                               minimum_severity=SeverityName.CRITICAL)]
    assert targets_from_spec(spec, {"am": "s3cret"}) == [
        DeliveryTarget("am", NotificationType.ALERTMANAGER, "http://am:9093", AlertSeverity.CRITICAL, "s3cret")]
