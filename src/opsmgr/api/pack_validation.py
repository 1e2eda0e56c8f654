"""What the API server's schema cannot check about a ManagementPack: overrides and task arguments that refer to
things in the pack, and override values of the right kind. Each problem names the field, the value and the fix.

Here, beside the models, because two components judge a pack by it: the operator's Valid condition and the
management servers, which push to agents only packs that pass it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from opsmgr.api.management_pack import ManagementPackSpec, Monitor, Override, OverrideParameter, Rule

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MONITOR_PARAMETERS = {OverrideParameter.ENABLED, OverrideParameter.INTERVAL_SECONDS,
                       OverrideParameter.WARNING_THRESHOLD, OverrideParameter.CRITICAL_THRESHOLD,
                       OverrideParameter.CONSECUTIVE_SAMPLES}


def _rule_parameters(rule: Rule) -> set[OverrideParameter]:
    allowed = {OverrideParameter.ENABLED}
    if rule.performance is not None:
        allowed.add(OverrideParameter.INTERVAL_SECONDS)
        if rule.performance.optimized_collection is not None:
            allowed |= {OverrideParameter.TOLERANCE, OverrideParameter.MAXIMUM_SAMPLE_SEPARATION}
    return allowed


def _is_bool(value: str) -> bool:
    return value in ("true", "false")


def _is_positive_int(value: str) -> bool:
    return value.isdigit() and int(value) >= 1


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


_VALUE_KINDS: dict[OverrideParameter, tuple[Callable[[str], bool], str]] = {
    OverrideParameter.ENABLED: (_is_bool, "true or false"),
    OverrideParameter.INTERVAL_SECONDS: (_is_positive_int, "a whole number of seconds, at least 1"),
    OverrideParameter.CONSECUTIVE_SAMPLES: (_is_positive_int, "a whole number, at least 1"),
    OverrideParameter.MAXIMUM_SAMPLE_SEPARATION: (_is_positive_int, "a whole number, at least 1"),
    OverrideParameter.WARNING_THRESHOLD: (_is_number, "a number"),
    OverrideParameter.CRITICAL_THRESHOLD: (_is_number, "a number"),
    OverrideParameter.TOLERANCE: (_is_number, "a number"),
}


def _override_problems(index: int, override: Override, rules: dict[str, Rule],
                       monitors: dict[str, Monitor]) -> list[str]:
    where = f"spec.overrides[{index}] ({override.name})"
    if override.rule is not None:
        rule = rules.get(override.rule)
        if rule is None:
            return [f"{where}: rule {override.rule!r} is not in spec.rules; name one of "
                    f"{', '.join(sorted(rules)) or '(none)'}"]
        allowed = _rule_parameters(rule)
        target = f"rule {override.rule!r}"
    else:
        assert override.monitor is not None  # the schema requires exactly one of rule or monitor
        if override.monitor not in monitors:
            return [f"{where}: monitor {override.monitor!r} is not in spec.monitors; name one of "
                    f"{', '.join(sorted(monitors)) or '(none)'}"]
        allowed = _MONITOR_PARAMETERS
        target = f"monitor {override.monitor!r}"
    if override.parameter not in allowed:
        return [f"{where}: parameter {override.parameter.value} does not apply to {target}; use one of "
                f"{', '.join(sorted(p.value for p in allowed))}"]
    check, wanted = _VALUE_KINDS[override.parameter]
    if not check(override.value):
        return [f"{where}: value {override.value!r} for {override.parameter.value} is not {wanted}"]
    return []


def pack_problems(spec: ManagementPackSpec) -> list[str]:
    """Every reference or value in the pack that cannot work, as sentences; empty when the pack is valid."""
    rules = {rule.name: rule for rule in spec.rules}
    monitors = {monitor.name: monitor for monitor in spec.monitors}
    problems: list[str] = []
    for index, override in enumerate(spec.overrides):
        problems += _override_problems(index, override, rules, monitors)
    for index, task in enumerate(spec.tasks):
        declared = {p.name for p in task.parameters}
        for argument in task.arguments:
            for name in _PLACEHOLDER.findall(argument):
                if name not in declared:
                    problems.append(f"spec.tasks[{index}] ({task.name}): argument {argument!r} refers to "
                                    f"{{{name}}}, which is not in its parameters; declare it or remove it")
    return problems
