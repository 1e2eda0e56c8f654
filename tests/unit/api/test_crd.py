"""The CRDs generated from the models: structural, bounded, described, and identical to crds/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from opsmgr.api import RESOURCES, Agent, AgentTask, CustomResource, Gateway, ManagementGroup, ManagementPack
from opsmgr.api.cli import crds, read_crd_directory
from opsmgr.api.crd import UnsupportedSchema, crd_files, crd_manifest, drifted_files, openapi_schema, structural

CRDS_DIR = Path(__file__).resolve().parents[3] / "crds"
KIND_IDS = [r.kind_name() for r in RESOURCES]


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`.properties` as `.name`, items as `[]`, map values as `{}`)."""
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def spec_schema(resource: type[CustomResource]) -> dict[str, Any]:
    schema: dict[str, Any] = openapi_schema(resource)["properties"]["spec"]
    return schema


def node(resource: type[CustomResource], path: str) -> dict[str, Any]:
    return dict(walk(openapi_schema(resource)))[path]


@pytest.mark.parametrize("resource", RESOURCES, ids=KIND_IDS)
def test_schema_is_structural(resource: type[CustomResource]) -> None:
    for path, schema in walk(openapi_schema(resource)):
        assert "$ref" not in schema and "title" not in schema and "nullable" not in schema, path
        assert schema.get("additionalProperties") is not False, path
        if "anyOf" in schema:
            assert schema.get("x-kubernetes-int-or-string") is True, f"{path}: only int-or-string may use anyOf"
        else:
            assert "type" in schema, f"{path} has no type"
        assert "default" not in schema or schema["default"] is not None, path


@pytest.mark.parametrize("resource", RESOURCES, ids=KIND_IDS)
def test_every_spec_field_has_a_description(resource: type[CustomResource]) -> None:
    # Fields are properties; list items and map values are described by their field.
    fields = [(path, schema) for path, schema in walk(spec_schema(resource), ".spec")
              if not path.endswith(("[]", "{}"))]
    undescribed = [path for path, schema in fields if not schema.get("description")]
    assert undescribed == []


@pytest.mark.parametrize("resource", RESOURCES, ids=KIND_IDS)
def test_every_string_list_and_map_in_the_spec_is_bounded(resource: type[CustomResource]) -> None:
    # Unbounded strings and lists make the API server's CEL cost estimate explode, and etcd objects grow.
    for path, schema in walk(spec_schema(resource), ".spec"):
        if schema.get("type") == "string" and "enum" not in schema and schema.get("format") != "date-time":
            assert "maxLength" in schema, f"{path} is an unbounded string"
        if schema.get("type") == "array":
            assert "maxItems" in schema, f"{path} is an unbounded list"
        if schema.get("type") == "object" and "additionalProperties" in schema:
            assert "maxProperties" in schema, f"{path} is an unbounded map"


@pytest.mark.parametrize("resource", RESOURCES, ids=KIND_IDS)
def test_lists_of_named_objects_are_maps_keyed_by_name(resource: type[CustomResource]) -> None:
    for path, schema in walk(openapi_schema(resource)):
        items = schema.get("items", {})
        if "name" in items.get("properties", {}):
            assert schema.get("x-kubernetes-list-type") == "map", path
            assert schema.get("x-kubernetes-list-map-keys") == ["name"], path
            assert "name" in items["required"], path


@pytest.mark.parametrize("resource", RESOURCES, ids=KIND_IDS)
def test_every_cel_rule_has_a_message_naming_a_spec_field(resource: type[CustomResource]) -> None:
    rules = [rule for _, schema in walk(openapi_schema(resource))
             for rule in schema.get("x-kubernetes-validations", [])]
    for rule in rules:
        assert rule["message"].startswith(("spec", "matchExpressions")), rule
        assert len(rule["message"]) > 40, f"say the fix too: {rule}"


@pytest.mark.parametrize(("resource", "path"), [
    (Agent, ".spec.fqdn"), (Agent, ".spec.managementGroupRef"), (Agent, ".spec.placement"),
    (Gateway, ".spec.managementGroupRef"),
])
def test_identity_fields_are_immutable(resource: type[CustomResource], path: str) -> None:
    rules = node(resource, path)["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf", "message": rules[0]["message"]} in rules
    assert rules[0]["message"].startswith(f"{path[1:]} is immutable")


def test_database_mode_and_agent_task_spec_are_immutable() -> None:
    database_rules = [r["rule"] for r in node(ManagementGroup, ".spec.database")["x-kubernetes-validations"]]
    assert "has(self.embedded) == has(oldSelf.embedded)" in database_rules
    task_rules = [r["rule"] for r in node(AgentTask, ".spec")["x-kubernetes-validations"]]
    assert "self == oldSelf" in task_rules


@pytest.mark.parametrize(("resource", "path", "default"), [
    (ManagementGroup, ".spec.heartbeat.intervalSeconds", 60),
    (ManagementGroup, ".spec.heartbeat.missedThreshold", 4),
    (ManagementGroup, ".spec.agentPort", 5723),
    (ManagementGroup, ".spec.retention.operationalDays", 7),
    (ManagementGroup, ".spec.retention.warehouseRawDays", 10),
    (ManagementGroup, ".spec.retention.warehouseAggregatedDays", 400),
    (ManagementGroup, ".spec.retention.alertDays", 400),
    (ManagementGroup, ".spec.approvalPolicy", "Review"),
    (ManagementGroup, ".spec.database", {"embedded": {"storageSize": "10Gi"}}),
    (ManagementGroup, ".spec.certificates.authority", {"generated": {"validity": "87600h"}}),
    (Agent, ".spec.queueLimitMB", 100),
    (Gateway, ".spec.port", 5723),
    (ManagementPack, ".spec.rules[].performance.optimizedCollection.toleranceType", "Percentage"),
])
def test_defaults_follow_operations_manager(resource: type[CustomResource], path: str, default: Any) -> None:
    assert node(resource, path)["default"] == default


@pytest.mark.parametrize(("resource", "path", "minimum", "maximum"), [
    (ManagementGroup, ".spec.heartbeat.intervalSeconds", 10, 3600),
    (ManagementGroup, ".spec.heartbeat.missedThreshold", 1, 100),
    (ManagementGroup, ".spec.agentPort", 1, 65535),
    (ManagementGroup, ".spec.retention.operationalDays", 1, 3650),
    (ManagementGroup, ".spec.servers.replicas", 1, 64),
    (Agent, ".spec.queueLimitMB", 5, 1500),
    (Agent, ".spec.heartbeat.intervalSeconds", 10, 3600),
    (Agent, ".spec.probe.port", 1, 65535),
    (Gateway, ".spec.replicas", 1, 16),
    (ManagementPack, ".spec.rules[].performance.optimizedCollection.tolerance", 0, None),
])
def test_bounds(resource: type[CustomResource], path: str, minimum: int, maximum: int | None) -> None:
    schema = node(resource, path)
    assert schema["minimum"] == minimum
    assert schema.get("maximum") == maximum


def test_status_carries_no_defaults() -> None:
    # Status is what opsmgr observed; a default there would claim a fact nobody observed.
    for resource in RESOURCES:
        status = openapi_schema(resource)["properties"]["status"]
        assert [path for path, schema in walk(status) if "default" in schema] == []


def test_agent_status_keeps_separate_facts() -> None:
    status = node(Agent, ".status")["properties"]
    assert status["approval"]["enum"] == ["Pending", "Approved", "Rejected"]
    assert status["connection"]["enum"] == ["NeverConnected", "Connected", "Disconnected"]
    assert status["health"]["enum"] == ["Healthy", "Warning", "Critical", "Unknown"]
    assert status["heartbeat"]["enum"] == ["OK", "Failure", "Unreachable"]
    assert status["maintenance"]["type"] == "boolean"
    assert status["lastHeartbeatTime"]["format"] == "date-time"
    assert {"usedBytes", "percentUsed", "evictions"} <= status["queue"]["properties"].keys()
    assert status["certificate"]["properties"]["notAfter"]["format"] == "date-time"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


# The console columns exactly as issue 4 lists them (NAME comes first on its own).
CONSOLE_COLUMNS = {
    Agent: ["HEALTH", "HEARTBEAT", "CONNECTION", "LAST-HEARTBEAT", "SERVER", "QUEUE", "AGE"],
    ManagementGroup: ["READY", "SERVERS", "AGENTS", "AGE"],
    Gateway: ["READY", "REPLICAS", "AGE"],
    ManagementPack: ["VERSION", "RULES", "MONITORS", "TASKS"],
    AgentTask: ["PHASE", "AGENT", "EXIT", "AGE"],
}


@pytest.mark.parametrize("resource", RESOURCES, ids=KIND_IDS)
def test_printer_columns_are_the_console_and_long_text_is_priority_1(resource: type[CustomResource]) -> None:
    columns = crd_manifest(resource)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if "priority" not in c] == CONSOLE_COLUMNS[resource]
    assert all(c["priority"] == 1 for c in columns if c["name"] == "MESSAGE")
    ready = [c for c in columns if c["name"] == "READY"]
    assert all(c["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status' for c in ready)


@pytest.mark.parametrize(("resource", "short_name"), [
    (ManagementGroup, "mg"), (Agent, "agt"), (Gateway, "gw"), (ManagementPack, "mp"), (AgentTask, "atask"),
])
def test_names_short_names_category_and_status_subresource(resource: type[CustomResource], short_name: str) -> None:
    spec = crd_manifest(resource)["spec"]
    assert spec["group"] == "opsmgr.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == [short_name]
    assert spec["names"]["categories"] == ["opsmgr"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_crds_directory_matches_the_models() -> None:
    drifted = drifted_files(crd_files(RESOURCES), read_crd_directory(CRDS_DIR))
    assert drifted == [], f"crds/ is out of date ({', '.join(drifted)}): run `opsmgr crds --write crds/`"


def test_opsmgr_crds_prints_every_crd_as_one_stream() -> None:
    result = CliRunner().invoke(crds, [])
    assert result.exit_code == 0, result.output
    documents = [d for d in yaml.safe_load_all(result.output) if d]
    assert [d["metadata"]["name"] for d in documents] == [r.crd_name() for r in RESOURCES]


def test_opsmgr_crds_write_replaces_stale_files_and_check_finds_drift(tmp_path: Path) -> None:
    (tmp_path / "retired.opsmgr.io.yaml").write_text("kind: CustomResourceDefinition\n")
    assert CliRunner().invoke(crds, ["--write", str(tmp_path)]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crd_files(RESOURCES))
    assert CliRunner().invoke(crds, ["--check", str(tmp_path)]).exit_code == 0

    (tmp_path / "agents.opsmgr.io.yaml").write_text("edited by hand\n")
    result = CliRunner().invoke(crds, ["--check", str(tmp_path)])
    assert result.exit_code == 1
    assert "agents.opsmgr.io.yaml" in result.output and "opsmgr crds --write" in result.output


def test_structural_unwraps_optional_and_merges_field_rules_onto_the_type() -> None:
    defs = {"Window": {"type": "object", "title": "Window", "properties": {"end": {"type": "string"}},
                       "x-kubernetes-validations": [{"rule": "type-rule", "message": "m1"}]}}
    field = {"anyOf": [{"$ref": "#/$defs/Window"}, {"type": "null"}], "default": None, "description": "d",
             "x-kubernetes-validations": [{"rule": "field-rule", "message": "m2"}]}
    result = structural(field, defs)
    assert result["type"] == "object" and result["description"] == "d"
    assert "default" not in result and "title" not in result
    assert [r["rule"] for r in result["x-kubernetes-validations"]] == ["type-rule", "field-rule"]


def test_structural_converts_int_or_string_const_and_exclusive_bounds() -> None:
    assert structural({"anyOf": [{"type": "integer"}, {"type": "string"}]}, {})["x-kubernetes-int-or-string"]
    assert structural({"type": "string", "const": "Agent"}, {})["enum"] == ["Agent"]
    bound = structural({"type": "number", "exclusiveMinimum": 0}, {})
    assert (bound["minimum"], bound["exclusiveMinimum"]) == (0, True)


def test_structural_refuses_a_union_it_cannot_express() -> None:
    with pytest.raises(UnsupportedSchema, match="union"):
        structural({"anyOf": [{"type": "object"}, {"type": "array"}]}, {})
