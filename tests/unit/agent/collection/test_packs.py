"""What an agent runs of the packs it is sent: selectors, overrides by label, disabled elements, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from opsmgr.agent.packs import diff_keyed, plan_from_json

EXAMPLE = Path(__file__).parents[4] / "examples" / "management-pack-linux.yaml"
LINUX = {"opsmgr.io/os": "linux"}


def example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return document


def packs_json(*packs: dict[str, Any]) -> bytes:
    return json.dumps(list(packs)).encode()


def test_the_example_pack_runs_on_a_linux_agent() -> None:
    plan = plan_from_json(packs_json(example()), LINUX)
    assert sorted(plan.rules) == ["linux-base/memory-used", "linux-base/processor-time", "linux-base/root-free-space",
                                  "linux-base/ssh-authentication-failures"]
    assert sorted(plan.monitors) == ["linux-base/processor-utilization", "linux-base/root-free-space"]
    assert sorted(plan.tasks) == ["disk-usage", "restart-service"]
    assert plan.versions == {"linux-base": "1.0.0.0"} and plan.problems == ()
    assert plan.monitors["linux-base/processor-utilization"].monitor.critical_threshold == 95


def test_an_override_applies_only_to_agents_its_selector_matches() -> None:
    plan = plan_from_json(packs_json(example()), {**LINUX, "role": "database"})
    assert plan.monitors["linux-base/processor-utilization"].monitor.critical_threshold == 90


def test_a_pack_whose_selector_does_not_match_is_not_run() -> None:
    assert plan_from_json(packs_json(example()), {"opsmgr.io/os": "windows"}).rules == {}


def test_overrides_disable_retime_and_retune_rules() -> None:
    pack = example()
    pack["spec"]["overrides"] = [
        {"name": "off", "rule": "memory-used", "parameter": "Enabled", "value": "false"},
        {"name": "slower", "rule": "processor-time", "parameter": "IntervalSeconds", "value": "120"},
        {"name": "looser", "rule": "processor-time", "parameter": "Tolerance", "value": "10"},
        {"name": "no-opt", "rule": "root-free-space", "parameter": "MaximumSampleSeparation", "value": "2"},
    ]
    plan = plan_from_json(packs_json(pack), LINUX)
    assert "linux-base/memory-used" not in plan.rules
    counter = plan.rules["linux-base/processor-time"].rule.performance
    assert counter is not None and counter.interval_seconds == 120
    assert counter.optimized_collection is not None and counter.optimized_collection.tolerance == 10
    disk = plan.rules["linux-base/root-free-space"].rule.performance
    assert disk is not None and disk.optimized_collection is not None
    assert disk.optimized_collection.maximum_sample_separation == 2


def test_an_override_that_cannot_apply_is_reported_and_the_element_runs_unchanged() -> None:
    pack = example()
    pack["spec"]["overrides"] = [
        {"name": "nan", "monitor": "processor-utilization", "parameter": "CriticalThreshold", "value": "high"},
        {"name": "crossed", "monitor": "processor-utilization", "parameter": "WarningThreshold", "value": "99"},
        {"name": "wrong-kind", "rule": "ssh-authentication-failures", "parameter": "Tolerance", "value": "1"},
    ]
    plan = plan_from_json(packs_json(pack), LINUX)
    assert plan.monitors["linux-base/processor-utilization"].monitor.warning_threshold == 80
    # Rules are resolved before monitors, so the rule's problem comes first.
    assert [p.split(":")[1].strip().split(" ")[1] for p in plan.problems] == ["wrong-kind", "nan", "crossed"]
    assert "warningThreshold must come before criticalThreshold" in plan.problems[2]


def test_an_invalid_pack_is_skipped_and_named_while_the_others_run() -> None:
    broken = {"metadata": {"name": "broken"}, "spec": {"version": "x"}}
    plan = plan_from_json(packs_json(broken, example()), LINUX)
    assert "linux-base/processor-time" in plan.rules
    assert len(plan.problems) == 1 and plan.problems[0].startswith("management pack broken is invalid")


def test_garbage_is_a_problem_not_a_crash() -> None:
    assert plan_from_json(b"{not json", LINUX).problems[0].startswith("management_packs_json is not JSON")
    assert plan_from_json(b"", LINUX).rules == {}


def test_diff_keyed_tells_added_removed_and_changed() -> None:
    diff = diff_keyed({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 20, "d": 4})
    assert (diff.added, diff.removed, diff.changed) == ({"d": 4}, {"c": 3}, {"b": (2, 20)})
    assert diff_keyed({"a": 1}, {"a": 1}).empty
