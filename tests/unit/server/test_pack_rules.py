"""The server's ManagementPack push decisions: which packs it pushes, which agent gets which, in what form, and when
the config version says something changed. The agent side (`opsmgr.agent.packs`) reads what is produced here."""

from __future__ import annotations

import json
from typing import Any

from opsmgr.agent.packs import PackRule, plan_from_json
from opsmgr.api.management_pack import ManagementPack
from opsmgr.server.pack_rules import Withheld, accept_pack, pack_config, packs_for

NAMESPACE, GROUP = "ops", "production"
WEB, DB = {"role": "web"}, {"role": "db"}


def body(name: str = "linux", *, group: str = GROUP, namespace: str | None = None,
         metadata: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    reference: dict[str, Any] = {"name": group} | ({"namespace": namespace} if namespace else {})
    return {"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementPack",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "resourceVersion": "7",
                         "generation": 1, **(metadata or {})},
            "spec": {"managementGroupRef": reference, "version": "1.0.0",
                     "rules": [{"name": "cpu", "performance": {"object": "Processor", "counter": "% Processor Time",
                                                               "instance": "_Total", "intervalSeconds": 60}}],
                     **spec}}


def pack(name: str = "linux", **spec: Any) -> ManagementPack:
    accepted = accept_pack(body(name, **spec), namespace=NAMESPACE, group=GROUP)
    assert isinstance(accepted, ManagementPack), accepted
    return accepted


def interval_of(rule: PackRule) -> int:
    assert rule.rule.performance is not None
    return rule.rule.performance.interval_seconds


def test_a_valid_pack_of_this_group_is_pushed_and_other_groups_packs_are_not_ours() -> None:
    assert isinstance(accept_pack(body(), namespace=NAMESPACE, group=GROUP), ManagementPack)
    assert isinstance(accept_pack(body(namespace=NAMESPACE), namespace=NAMESPACE, group=GROUP), ManagementPack)
    assert accept_pack(body(group="staging"), namespace=NAMESPACE, group=GROUP) is None
    assert accept_pack(body(namespace="elsewhere"), namespace=NAMESPACE, group=GROUP) is None


def test_an_invalid_pack_is_withheld_with_the_operators_reason() -> None:
    bad = body(overrides=[{"name": "quiet", "rule": "memory", "parameter": "Enabled", "value": "false"}])
    withheld = accept_pack(bad, namespace=NAMESPACE, group=GROUP)
    assert isinstance(withheld, Withheld)
    assert "linux" in withheld.reason and "spec.overrides[0] (quiet)" in withheld.reason
    assert "'memory' is not in spec.rules" in withheld.reason


def test_a_pack_being_deleted_is_withheld() -> None:
    deleting = body(metadata={"deletionTimestamp": "2025-01-01T00:00:00Z"})
    assert accept_pack(deleting, namespace=NAMESPACE, group=GROUP) == Withheld("management pack linux is being deleted")


def test_a_pack_reaches_only_the_agents_its_selector_matches() -> None:
    packs = [pack("everyone"), pack("web-only", agentSelector={"matchLabels": WEB}),
             pack("not-db", agentSelector={"matchExpressions": [{"key": "role", "operator": "NotIn",
                                                                  "values": ["db"]}]})]
    assert pack_config(packs, WEB).packs == ("everyone", "not-db", "web-only")
    assert pack_config(packs, DB).packs == ("everyone",)
    assert pack_config(packs, {}).packs == ("everyone", "not-db")


def test_no_targeting_pack_is_an_empty_list_which_the_agent_applies_as_running_none() -> None:
    config = pack_config([pack(agentSelector={"matchLabels": WEB})], DB)
    assert (config.packs_json, config.packs) == (b"[]", ())
    assert config.version  # "[]" has a version too, so the agent can tell it from "nothing said"
    assert plan_from_json(config.packs_json, DB).rules == {}


def test_overrides_are_resolved_for_the_agent_so_its_own_configured_labels_cannot_veto() -> None:
    """The agent matches selectors against its configured labels, which need not be its Agent's: what arrives
    carries no selector left to match, and only the overrides for this agent."""
    linux = pack(agentSelector={"matchLabels": WEB}, overrides=[
        {"name": "slow-on-canary", "rule": "cpu", "parameter": "IntervalSeconds", "value": "600",
         "agentSelector": {"matchLabels": {"track": "canary"}}}])
    canary = pack_config([linux], {**WEB, "track": "canary"})
    stable = pack_config([linux], WEB)

    sent = json.loads(canary.packs_json)
    assert [p["metadata"] for p in sent] == [{"name": "linux"}]
    assert sent[0]["spec"]["agentSelector"] == {"matchLabels": {}, "matchExpressions": []}  # selects any agent
    assert [o.get("agentSelector") for o in sent[0]["spec"]["overrides"]] == [None]
    # Agents that were configured with no labels at all run what their Agent resource's labels select.
    assert interval_of(plan_from_json(canary.packs_json, {}).rules["linux/cpu"]) == 600
    assert interval_of(plan_from_json(stable.packs_json, {}).rules["linux/cpu"]) == 60
    assert plan_from_json(stable.packs_json, {}).versions == {"linux": "1.0.0"}
    assert plan_from_json(stable.packs_json, {}).problems == ()


def test_the_version_changes_when_what_the_agent_runs_changes_and_only_then() -> None:
    base = pack_config([pack("a"), pack("b")], WEB)
    # Same packs in another order, a status write (new resourceVersion), an unrelated label: nothing to send.
    assert pack_config([pack("b"), pack("a")], WEB).version == base.version
    rewritten = accept_pack(body("a", metadata={"resourceVersion": "99", "generation": 1}), namespace=NAMESPACE,
                            group=GROUP)
    assert isinstance(rewritten, ManagementPack)
    assert pack_config([rewritten, pack("b")], WEB).version == base.version
    assert pack_config([pack("a"), pack("b")], {**WEB, "zone": "eu"}).version == base.version
    # A new rule, a new pack version, a pack gone: sent.
    more_rules = pack("a", rules=[{"name": "memory", "performance": {"object": "Memory", "counter": "% Used Memory"}}])
    assert pack_config([more_rules, pack("b")], WEB).version != base.version
    assert pack_config([pack("a", version="1.0.1"), pack("b")], WEB).version != base.version
    assert pack_config([pack("a")], WEB).version != base.version


def test_a_label_change_changes_the_version_only_when_it_changes_targeting() -> None:
    packs = [pack("web", agentSelector={"matchLabels": WEB})]
    before = pack_config(packs, DB)
    assert pack_config(packs, {**DB, "zone": "eu"}).version == before.version
    assert pack_config(packs, WEB).version != before.version
    assert [p["metadata"]["name"] for p in packs_for(packs, WEB)] == ["web"]
