"""The examples, and invalid objects made from them: one catalog for the model tests and the API-server tests.

Each invalid object changes one thing in an example. `field` is the path the API server's message must name;
`says` is a fragment of why (the bound, the rule's message, "Duplicate value"), so a rejection for another
reason does not count.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsmgr.api import RESOURCES_BY_KIND, CustomResource

EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
DELETE = object()


def load_examples() -> dict[str, dict[str, Any]]:
    """Example file stem -> its object."""
    examples: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        assert isinstance(document, dict), f"{path} holds one object"
        examples[path.stem] = document
    return examples


EXAMPLES = load_examples()


def model_of(document: Mapping[str, Any]) -> type[CustomResource]:
    return RESOURCES_BY_KIND[str(document["kind"])]


def changed(document: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy with each dotted path ("spec.rules.0.name") set to its value, or removed for DELETE."""
    result = copy.deepcopy(dict(document))
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = copy.deepcopy(value)
        else:
            node[last] = copy.deepcopy(value)
    return result


@dataclass(frozen=True)
class Invalid:
    """An example with one change the API server must reject."""

    id: str
    example: str
    changes: Mapping[str, Any] = field(repr=False)
    field: str
    says: str
    on_update: bool = False
    """Rejected as a change to an existing object (a transition rule), not at creation."""

    def document(self) -> dict[str, Any]:
        return changed(EXAMPLES[self.example], self.changes)


def _rules(count: int) -> list[dict[str, Any]]:
    return [{"name": f"counter-{i}", "performance": {"object": "Processor", "counter": "% Processor Time"}}
            for i in range(count)]


_PACK = EXAMPLES["management-pack-linux"]["spec"]
_PROBE = {"port": 22}

INVALID = [
    # Bounds (OpenAPI), with the numbers from DESIGN.md.
    Invalid("heartbeat-interval-below-10s", "management-group", {"spec.heartbeat.intervalSeconds": 9},
            "spec.heartbeat.intervalSeconds", "greater than or equal to 10"),
    Invalid("heartbeat-interval-above-3600s", "management-group", {"spec.heartbeat.intervalSeconds": 3601},
            "spec.heartbeat.intervalSeconds", "less than or equal to 3600"),
    Invalid("missed-threshold-0", "management-group", {"spec.heartbeat.missedThreshold": 0},
            "spec.heartbeat.missedThreshold", "greater than or equal to 1"),
    Invalid("missed-threshold-101", "management-group", {"spec.heartbeat.missedThreshold": 101},
            "spec.heartbeat.missedThreshold", "less than or equal to 100"),
    Invalid("agent-port-0", "management-group", {"spec.agentPort": 0}, "spec.agentPort", "greater than or equal to 1"),
    Invalid("agent-port-65536", "management-group", {"spec.agentPort": 65536}, "spec.agentPort",
            "less than or equal to 65535"),
    Invalid("operational-retention-0-days", "management-group", {"spec.retention.operationalDays": 0},
            "spec.retention.operationalDays", "greater than or equal to 1"),
    Invalid("warehouse-retention-0-days", "management-group", {"spec.retention.warehouseRawDays": 0},
            "spec.retention.warehouseRawDays", "greater than or equal to 1"),
    Invalid("server-replicas-0", "management-group", {"spec.servers.replicas": 0}, "spec.servers.replicas",
            "greater than or equal to 1"),
    Invalid("validity-not-a-duration", "management-group", {"spec.certificates.validity": "1y"},
            "spec.certificates.validity", "should match"),
    Invalid("queue-limit-4mb", "agent-host", {"spec.queueLimitMB": 4}, "spec.queueLimitMB",
            "greater than or equal to 5"),
    Invalid("queue-limit-1501mb", "agent-host", {"spec.queueLimitMB": 1501}, "spec.queueLimitMB",
            "less than or equal to 1500"),
    Invalid("agent-heartbeat-override-below-10s", "agent-host", {"spec.heartbeat.intervalSeconds": 9},
            "spec.heartbeat.intervalSeconds", "greater than or equal to 10"),
    Invalid("probe-port-0", "agent-host", {"spec.probe.port": 0}, "spec.probe.port", "greater than or equal to 1"),
    Invalid("fqdn-longer-than-253", "agent-node", {"spec.fqdn": "a" * 254}, "spec.fqdn", "253"),
    Invalid("unknown-placement", "agent-node", {"spec.placement": "Laptop"}, "spec.placement", "Unsupported value"),
    Invalid("gateway-replicas-0", "gateway", {"spec.replicas": 0}, "spec.replicas", "greater than or equal to 1"),
    Invalid("gateway-port-65536", "gateway", {"spec.port": 65536}, "spec.port", "less than or equal to 65535"),
    Invalid("negative-tolerance", "management-pack-linux",
            {"spec.rules.0.performance.optimizedCollection.tolerance": -1},
            "spec.rules[0].performance.optimizedCollection.tolerance", "greater than or equal to 0"),
    Invalid("sample-separation-0", "management-pack-linux",
            {"spec.rules.0.performance.optimizedCollection.maximumSampleSeparation": 0},
            "spec.rules[0].performance.optimizedCollection.maximumSampleSeparation", "greater than or equal to 1"),
    Invalid("more-than-256-rules", "management-pack-linux", {"spec.rules": _rules(257)}, "spec.rules",
            "must have at most 256 items"),
    Invalid("pack-version-not-dotted", "management-pack-linux", {"spec.version": "1.x"}, "spec.version",
            "should match"),
    # CEL: choices of exactly one.
    Invalid("embedded-and-external-database", "management-group",
            {"spec.database.external": {"operational": {"name": "pg-app"}, "warehouse": {"name": "dw-app"}}},
            "spec.database", "set exactly one of embedded"),
    Invalid("no-database", "management-group", {"spec.database": {}}, "spec.database", "set exactly one of embedded"),
    Invalid("generated-and-imported-ca", "management-group",
            {"spec.certificates.authority": {"generated": {}, "imported": {"secret": {"name": "my-ca"}}}},
            "spec.certificates.authority", "set exactly one of generated"),
    Invalid("agent-and-agent-selector", "agent-task", {"spec.agentSelector": {"matchLabels": {"role": "database"}}},
            "agentSelector", "set exactly one of agent"),
    Invalid("neither-agent-nor-selector", "agent-task", {"spec.agent": DELETE}, "agentSelector",
            "set exactly one of agent"),
    Invalid("rule-with-performance-and-event", "management-pack-linux",
            {"spec.rules.0.event": {"logFile": "/var/log/syslog", "pattern": "error"}}, "spec.rules[0]",
            "exactly one of performance or event"),
    Invalid("override-of-rule-and-monitor", "management-pack-linux", {"spec.overrides.0.rule": "processor-time"},
            "spec.overrides[0]", "exactly one of rule or monitor"),
    # CEL: fields that only make sense together, or in order.
    Invalid("renew-before-not-shorter-than-validity", "management-group",
            {"spec.certificates.renewBefore": "2160h"}, "spec.certificates.renewBefore",
            "must be shorter than spec.certificates.validity"),
    Invalid("warning-not-below-critical-for-above", "management-pack-linux", {"spec.monitors.0.warningThreshold": 96},
            "spec.monitors[0].warningThreshold", "must come before criticalThreshold"),
    Invalid("warning-not-above-critical-for-below", "management-pack-linux", {"spec.monitors.1.warningThreshold": 5},
            "spec.monitors[1].warningThreshold", "must come before criticalThreshold"),
    Invalid("alert-on-performance-rule", "management-pack-linux", {"spec.rules.0.alert": {"severity": "Warning"}},
            "spec.rules[0].alert", "alert is only for event rules"),
    Invalid("probe-on-node-agent", "agent-node", {"spec.probe": _PROBE}, "spec.probe",
            "applies only to placement Host"),
    Invalid("maintenance-ends-before-it-starts", "agent-host",
            {"spec.maintenance": {"start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"}},
            "spec.maintenance.end", "must be later than spec.maintenance.start"),
    Invalid("selector-in-without-values", "management-pack-linux",
            {"spec.agentSelector": {"matchExpressions": [{"key": "role", "operator": "In"}]}},
            "spec.agentSelector.matchExpressions[0].values", "need at least one value"),
    # Names unique within lists (x-kubernetes-list-type map and set).
    Invalid("duplicate-rule-name", "management-pack-linux", {"spec.rules": [_PACK["rules"][0]] * 2}, "spec.rules[1]",
            "Duplicate value"),
    Invalid("duplicate-monitor-name", "management-pack-linux", {"spec.monitors": [_PACK["monitors"][0]] * 2},
            "spec.monitors[1]", "Duplicate value"),
    Invalid("duplicate-task-name", "management-pack-linux", {"spec.tasks": [_PACK["tasks"][1]] * 2},
            "spec.tasks[1]", "Duplicate value"),
    Invalid("duplicate-task-parameter", "management-pack-linux",
            {"spec.tasks.0.parameters": [_PACK["tasks"][0]["parameters"][0]] * 2}, "spec.tasks[0].parameters[1]",
            "Duplicate value"),
    Invalid("duplicate-notification-target", "management-group",
            {"spec.notifications": [EXAMPLES["management-group"]["spec"]["notifications"][0]] * 2},
            "spec.notifications[1]", "Duplicate value"),
    Invalid("duplicate-task-run-parameter", "agent-task", {"spec.parameters": [{"name": "service", "value": "a"},
                                                                              {"name": "service", "value": "b"}]},
            "spec.parameters[1]", "Duplicate value"),
    Invalid("duplicate-failover-server", "agent-host", {"spec.failoverServers": ["production-server-1"] * 2},
            "spec.failoverServers[1]", "Duplicate value"),
    # Immutable once created (CEL transition rules).
    Invalid("agent-fqdn-changed", "agent-node", {"spec.fqdn": "worker-2.cluster.local"}, "spec.fqdn",
            "spec.fqdn is immutable", on_update=True),
    Invalid("agent-group-changed", "agent-node", {"spec.managementGroupRef.name": "staging"},
            "spec.managementGroupRef", "spec.managementGroupRef is immutable", on_update=True),
    Invalid("agent-placement-changed", "agent-node", {"spec.placement": "Sidecar"}, "spec.placement",
            "spec.placement is immutable", on_update=True),
    Invalid("database-mode-changed", "management-group",
            {"spec.database": {"external": {"operational": {"name": "pg-app"}, "warehouse": {"name": "dw-app"}}}},
            "spec.database", "spec.database mode is immutable", on_update=True),
    Invalid("gateway-group-changed", "gateway", {"spec.managementGroupRef.name": "staging"},
            "spec.managementGroupRef", "spec.managementGroupRef is immutable", on_update=True),
    Invalid("agent-task-spec-changed", "agent-task", {"spec.parameters.0.value": "postgresql"}, "spec",
            "spec is immutable", on_update=True),
]

INVALID_ON_CREATE = [case for case in INVALID if not case.on_update]
INVALID_ON_UPDATE = [case for case in INVALID if case.on_update]
