"""The pure parts of the group's duties: when aggregation runs, what the group's retention means, bearer tokens,
and the Role that lets servers read exactly the notification targets' Secrets."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from opsmgr.api import ManagementGroup
from opsmgr.api.management_group import RetentionSpec
from opsmgr.db.model import Retention
from opsmgr.operator.render import render_server_access
from opsmgr.server.duties import next_hourly_run, retention_of, token_of


def test_aggregation_runs_minutes_past_the_next_hour_never_now_or_in_the_past() -> None:
    assert next_hourly_run(datetime(2026, 12, 6, 10, 2, tzinfo=UTC), 5) == datetime(2026, 12, 6, 10, 5, tzinfo=UTC)
    assert next_hourly_run(datetime(2026, 12, 6, 10, 5, tzinfo=UTC), 5) == datetime(2026, 12, 6, 11, 5, tzinfo=UTC)
    assert next_hourly_run(datetime(2026, 12, 6, 23, 59, tzinfo=UTC), 5) == datetime(2026, 12, 7, 0, 5, tzinfo=UTC)


def test_the_groups_retention_becomes_the_writers_and_groomers_retention() -> None:
    spec = RetentionSpec(operational_days=3, warehouse_raw_days=20, warehouse_aggregated_days=90, alert_days=30)
    assert retention_of(spec) == Retention(operational_days=3, warehouse_raw_days=20, warehouse_aggregated_days=90,
                                           alert_days=30)
    assert retention_of(RetentionSpec()) == Retention()  # the API's defaults are Operations Manager's


def test_a_bearer_token_is_read_from_its_key_and_a_missing_one_is_none() -> None:
    secret = {"data": {"token": base64.b64encode(b"abc\n").decode()}}
    assert token_of(secret, "token") == "abc"
    assert token_of(secret, "other") is None
    assert token_of(None, "token") is None
    assert token_of({"data": {"token": ""}}, "token") is None


def test_servers_may_read_the_notification_secrets_by_name_and_no_other() -> None:
    group = ManagementGroup.from_body({"metadata": {"name": "contoso", "namespace": "ops", "uid": "0"}, "spec": {
        "notifications": [
            {"name": "am", "type": "Alertmanager", "url": "http://am:9093",
             "credentials": {"name": "am-token", "key": "token"}},
            {"name": "hook", "type": "Webhook", "url": "https://hooks.example/x"}]}})
    role = next(m for m in render_server_access(group) if m["kind"] == "Role")
    readable = [rule["resourceNames"] for rule in role["rules"] if rule["resources"] == ["secrets"]]
    assert ["am-token"] in readable
    assert all("resourceNames" in rule for rule in role["rules"] if rule["resources"] == ["secrets"])
    plain = ManagementGroup.from_body({"metadata": {"name": "contoso", "namespace": "ops", "uid": "0"}})
    plain_role = next(m for m in render_server_access(plain) if m["kind"] == "Role")
    assert len([r for r in plain_role["rules"] if r["resources"] == ["secrets"]]) == 2  # CA and join tokens only
