"""Builds the CustomResourceDefinitions from the pydantic models: a pure function of the models, nothing else.

pydantic's JSON Schema is close to what the API server wants; `structural` closes the gap: `$ref`s inlined,
titles dropped, `Optional` unwrapped (the API server prunes nulls, so absent is how "unset" reads back),
`int | str` marked int-or-string, `const` as a one-value enum, and defaults taken from default factories so
nested defaults are filled in by the API server exactly as pydantic fills them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from opsmgr.api.common import GROUP, VERSION, CustomResource

CATEGORY = "opsmgr"
GENERATED_HEADER = "# Generated from src/opsmgr/api by `opsmgr crds --write crds/`; edit the models, not this file.\n"

# Keys pydantic emits that a structural CRD schema has no use for.
_DROPPED_KEYS = frozenset({"title", "examples"})
# Schema keys in the order people read them; anything else follows in pydantic's order.
_KEY_ORDER = ("type", "description", "default", "enum", "format", "pattern", "minimum", "exclusiveMinimum",
              "maximum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "maxProperties")


class UnsupportedSchema(TypeError):
    """A model uses a type that has no structural OpenAPI form (e.g. a union of two objects)."""


class _KubernetesJsonSchema(GenerateJsonSchema):
    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            # In full: the API server checks a default against CEL rules before filling nested defaults into it.
            return _compact(value.model_dump(mode="json", by_alias=True, exclude_none=True))
        # An empty list or map reads back as absent, so it needs no default.
        return NoDefault


def _compact(value: dict[str, Any]) -> dict[str, Any]:
    """A default without its empty lists and maps: those read back as absent."""
    compacted = {key: _compact(item) if isinstance(item, dict) else item for key, item in value.items()}
    return {key: item for key, item in compacted.items() if item not in ({}, [])}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, as a CRD version's schema needs it."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_KubernetesJsonSchema)
    return structural(raw, raw.get("$defs", {}))


def structural(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite one JSON Schema node (and everything below it) into Kubernetes' structural form."""
    schema = {key: value for key, value in node.items() if key not in _DROPPED_KEYS and key != "$defs"}
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        return _merge(structural(target, defs), schema)
    if "allOf" in schema:
        (only,) = schema.pop("allOf")
        return _merge(structural(only, defs), schema)
    if "anyOf" in schema:
        return _union(schema, defs)
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if "exclusiveMinimum" in schema:
        schema["minimum"], schema["exclusiveMinimum"] = schema["exclusiveMinimum"], True
    if "exclusiveMaximum" in schema:
        schema["maximum"], schema["exclusiveMaximum"] = schema["exclusiveMaximum"], True
    if "properties" in schema:
        schema["properties"] = {name: structural(prop, defs) for name, prop in schema["properties"].items()}
        schema.pop("additionalProperties", None)  # pruning drops unknown fields; `false` is not allowed here
    elif isinstance(schema.get("additionalProperties"), Mapping):
        schema["additionalProperties"] = structural(schema["additionalProperties"], defs)
        if "maxItems" in schema:
            schema["maxProperties"] = schema.pop("maxItems")
    if "items" in schema:
        schema["items"] = structural(schema["items"], defs)
    if "type" not in schema:
        raise UnsupportedSchema(f"schema without a type: {schema}")
    return _ordered(schema)


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    first = {key: schema[key] for key in _KEY_ORDER if key in schema}
    return {**first, **{key: value for key, value in schema.items() if key not in first}}


def _union(schema: dict[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    options = [option for option in schema.pop("anyOf") if option != {"type": "null"}]
    if len(options) == 1:
        return _merge(structural(options[0], defs), schema)
    if sorted(option.get("type", "") for option in options) == ["integer", "string"]:
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        schema["x-kubernetes-int-or-string"] = True
        return _ordered(schema)
    raise UnsupportedSchema(f"no structural form for a union of {options}")


def _merge(target: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    """A referenced type with the field's own keys (description, default, rules) on top; both sets of rules apply."""
    merged = {**target, **field}
    rules = target.get("x-kubernetes-validations", []) + field.get("x-kubernetes-validations", [])
    if rules:
        merged["x-kubernetes-validations"] = rules
    return _ordered(merged)


def _without_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _without_defaults(value) for key, value in schema.items() if key != "default"}
    return schema


def _field_model(resource: type[CustomResource], name: str) -> type[BaseModel]:
    annotation = resource.model_fields[name].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), f"{resource.__name__}.{name}"
    return annotation


def openapi_schema(resource: type[CustomResource]) -> dict[str, Any]:
    """The openAPIV3Schema of a resource: spec from its spec model, status (without defaults) from its status model."""
    spec = model_schema(_field_model(resource, "spec"))
    if resource.spec_rules:
        spec["x-kubernetes-validations"] = [
            *spec.get("x-kubernetes-validations", []), *(rule.to_schema() for rule in resource.spec_rules)]
    # Status is written by opsmgr alone; defaults there would invent facts nobody observed.
    status = _without_defaults(model_schema(_field_model(resource, "status")))
    schema: dict[str, Any] = {
        "type": "object",
        "description": resource.__doc__ or resource.kind_name(),
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this object."},
            "kind": {"type": "string", "description": "Kind is the type of this object."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if spec.get("required"):
        schema["required"] = ["spec"]
    else:
        spec["default"] = {}
    return schema


def crd_manifest(resource: type[CustomResource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource kind."""
    kind = resource.kind_name()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name(),
            "labels": {"app.kubernetes.io/name": "opsmgr", "app.kubernetes.io/part-of": "opsmgr"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": resource.plural,
                "singular": kind.lower(),
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [column.to_crd() for column in resource.printer_columns],
                "schema": {"openAPIV3Schema": openapi_schema(resource)},
            }],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors and aliases would make the CRDs hard to read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(manifest: Mapping[str, Any]) -> str:
    """One manifest as a YAML document, stable byte for byte so crds/ can be compared with it."""
    return yaml.dump(dict(manifest), Dumper=_PlainDumper, sort_keys=False, width=120, allow_unicode=True)


def crd_file_name(resource: type[CustomResource]) -> str:
    return f"{resource.crd_name()}.yaml"


def crd_files(resources: tuple[type[CustomResource], ...]) -> dict[str, str]:
    """File name -> content of every CRD, as crds/ holds them."""
    return {crd_file_name(r): GENERATED_HEADER + render_yaml(crd_manifest(r)) for r in resources}


def crd_stream(resources: tuple[type[CustomResource], ...]) -> str:
    """Every CRD as one multi-document YAML stream, for `kubectl apply -f -`."""
    return GENERATED_HEADER + "".join(f"---\n{render_yaml(crd_manifest(r))}" for r in resources)



def drifted_files(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """Names of CRD files that differ, are missing, or are left over from a kind that no longer exists."""
    return sorted(name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name))
