"""From the management packs the server pushes to what this agent runs (pure).

The server sends the packs that target the agent (`AgentConfig.management_packs_json`); the agent applies the
overrides whose selector matches its own labels, drops disabled elements, and keys every rule and monitor by
"pack/name" so two packs never collide. `diff_keyed` says what changed between two plans, so the scheduler
restarts only those.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from opsmgr.api.management_pack import (
    ManagementPack,
    ManagementPackSpec,
    Monitor,
    OptimizedCollection,
    Override,
    OverrideParameter,
    Rule,
    Task,
)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class PackRule:
    pack: str
    rule: Rule

    @property
    def key(self) -> str:
        return f"{self.pack}/{self.rule.name}"


@dataclass(frozen=True, slots=True)
class PackMonitor:
    pack: str
    monitor: Monitor

    @property
    def key(self) -> str:
        return f"{self.pack}/{self.monitor.name}"


@dataclass(frozen=True, slots=True)
class CollectionPlan:
    """The enabled rules and monitors (overrides applied) and the tasks this agent may be asked to run."""

    rules: Mapping[str, PackRule] = field(default_factory=dict)
    monitors: Mapping[str, PackMonitor] = field(default_factory=dict)
    tasks: Mapping[str, Task] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    """Overrides or packs that could not be applied, each a sentence naming the pack, element and fix."""


@dataclass(frozen=True, slots=True)
class KeyedDiff(Generic[K, V]):
    added: dict[K, V]
    removed: dict[K, V]
    changed: dict[K, tuple[V, V]]  # key -> (old, new)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_keyed(old: Mapping[K, V], new: Mapping[K, V]) -> KeyedDiff[K, V]:
    """What is new, gone and different between two keyed sets; equal values are left alone."""
    return KeyedDiff(
        added={k: v for k, v in new.items() if k not in old},
        removed={k: v for k, v in old.items() if k not in new},
        changed={k: (old[k], v) for k, v in new.items() if k in old and old[k] != v},
    )


def parse_packs(document: bytes | str) -> tuple[list[tuple[str, ManagementPackSpec]], list[str]]:
    """The packs in `management_packs_json`: a JSON list of ManagementPack objects (or bare specs).

    A pack that does not validate is skipped and named in the problems; the others still run.
    """
    problems: list[str] = []
    if not document:
        return [], problems
    try:
        raw = json.loads(document)
    except ValueError as error:
        return [], [f"management_packs_json is not JSON ({error}): the server must send a JSON list of packs"]
    if not isinstance(raw, list):
        return [], ["management_packs_json is not a list: the server must send a JSON list of packs"]
    packs: list[tuple[str, ManagementPackSpec]] = []
    for index, body in enumerate(raw):
        name = _pack_name(body, index)
        try:
            spec = (ManagementPack.model_validate(body).spec if isinstance(body, dict) and "spec" in body
                    else ManagementPackSpec.model_validate(body))
        except ValidationError as error:
            problems.append(f"management pack {name} is invalid and was skipped: {_first_error(error)}")
            continue
        packs.append((name, spec))
    return packs, problems


def build_plan(packs: Iterable[tuple[str, ManagementPackSpec]], labels: Mapping[str, str],
               problems: Iterable[str] = ()) -> CollectionPlan:
    """What this agent (with these labels) runs of these packs."""
    found = list(problems)
    rules: dict[str, PackRule] = {}
    monitors: dict[str, PackMonitor] = {}
    tasks: dict[str, Task] = {}
    versions: dict[str, str] = {}
    for pack, spec in packs:
        if not spec.agent_selector.matches(labels):
            continue
        versions[pack] = spec.version
        overrides = [o for o in spec.overrides if o.agent_selector is None or o.agent_selector.matches(labels)]
        for declared in spec.rules:
            rule = _overridden(pack, declared, [o for o in overrides if o.rule == declared.name], _apply_rule, found)
            if rule.enabled:
                rules[f"{pack}/{rule.name}"] = PackRule(pack, rule)
        for stated in spec.monitors:
            monitor = _overridden(pack, stated, [o for o in overrides if o.monitor == stated.name],
                                  _apply_monitor, found)
            if monitor.enabled:
                monitors[f"{pack}/{monitor.name}"] = PackMonitor(pack, monitor)
        for task in spec.tasks:
            if task.name in tasks and tasks[task.name] != task:
                found.append(f"management pack {pack}: task {task.name} is also defined by another pack; the first "
                             "one is used. Rename one of them")
                continue
            tasks.setdefault(task.name, task)
    return CollectionPlan(rules, monitors, tasks, versions, tuple(found))


def plan_from_json(document: bytes | str, labels: Mapping[str, str]) -> CollectionPlan:
    packs, problems = parse_packs(document)
    return build_plan(packs, labels, problems)


M = TypeVar("M", Rule, Monitor)


def _overridden(pack: str, element: M, overrides: list[Override],
                apply: Callable[[dict[str, Any], Override], None], problems: list[str]) -> M:
    for override in overrides:
        body = element.model_dump(by_alias=False)
        try:
            apply(body, override)
            element = type(element).model_validate(body)
        except (ValueError, ValidationError) as error:
            detail = _first_error(error) if isinstance(error, ValidationError) else str(error)
            problems.append(f"management pack {pack}: override {override.name} ({override.parameter} = "
                            f"{override.value!r}) was not applied: {detail}")
    return element


def _apply_rule(body: dict[str, Any], override: Override) -> None:
    match override.parameter:
        case OverrideParameter.ENABLED:
            body["enabled"] = _boolean(override.value)
        case OverrideParameter.INTERVAL_SECONDS:
            _counter_of(body)["interval_seconds"] = _whole(override.value)
        case OverrideParameter.TOLERANCE | OverrideParameter.MAXIMUM_SAMPLE_SEPARATION:
            performance = _counter_of(body)
            optimized = performance.get("optimized_collection") or OptimizedCollection(tolerance=0).model_dump()
            name = ("tolerance" if override.parameter is OverrideParameter.TOLERANCE
                    else "maximum_sample_separation")
            optimized[name] = _number(override.value) if name == "tolerance" else _whole(override.value)
            performance["optimized_collection"] = optimized
        case _:
            raise ValueError(f"{override.parameter} applies to monitors, not rules; name a monitor instead")


def _apply_monitor(body: dict[str, Any], override: Override) -> None:
    match override.parameter:
        case OverrideParameter.ENABLED:
            body["enabled"] = _boolean(override.value)
        case OverrideParameter.INTERVAL_SECONDS:
            body["performance"]["interval_seconds"] = _whole(override.value)
        case OverrideParameter.WARNING_THRESHOLD:
            body["warning_threshold"] = _number(override.value)
        case OverrideParameter.CRITICAL_THRESHOLD:
            body["critical_threshold"] = _number(override.value)
        case OverrideParameter.CONSECUTIVE_SAMPLES:
            body["consecutive_samples"] = _whole(override.value)
        case _:
            raise ValueError(f"{override.parameter} applies to performance rules, not monitors; name a rule instead")


def _counter_of(body: dict[str, Any]) -> dict[str, Any]:
    performance = body.get("performance")
    if not isinstance(performance, dict):
        raise ValueError("the rule collects events, not a performance counter; override a performance rule")
    return performance


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number: write e.g. \"90\" or \"2.5\"") from None


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number: write e.g. \"300\"") from None


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in {"true", "false"}:
        raise ValueError(f"{value!r} is not a boolean: write \"true\" or \"false\"")
    return lowered == "true"


def _pack_name(body: Any, index: int) -> str:
    if isinstance(body, dict):
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
            return str(metadata["name"])
    return f"pack{index}"


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])
