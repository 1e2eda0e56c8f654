"""The base every custom-resource model builds on, and the small types the kinds share.

Python stays snake_case; the JSON the API server sees is camelCase through the alias generator. Cross-field
rules are written once as `CelRule`s: the CRD carries the CEL expression, pydantic runs the Python twin, and
both report the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

GROUP = "opsmgr.io"
VERSION = "v1alpha1"
API_VERSION: Final = "opsmgr.io/v1alpha1"

# Bounds that keep the API server's CEL cost estimate finite and objects small enough for etcd.
NAME_MAX = 63
DNS_NAME_MAX = 253
TEXT_MAX = 1024
DESCRIPTION_MAX = 4096
LIST_MAX = 64

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A computer's FQDN as it appears in its certificate's CN: labels of letters, digits and hyphens.
FQDN_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
# Go duration syntax (what CEL's duration() and cert-manager accept), restricted to h/m/s.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"
_DECIMAL = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_DECIMAL}))?$"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|m|s)")
_DURATION_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> timedelta:
    """A Go duration restricted to h/m/s ("2160h", "1h30m", "90s") as a timedelta."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 8760h, 90m or 30s")
    seconds = sum(float(number) * _DURATION_UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def _valid_duration(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[str, Field(max_length=32, pattern=DURATION_PATTERN), AfterValidator(_valid_duration)]
"""A Go duration string restricted to hours, minutes and seconds, e.g. "8760h"."""

Quantity = Annotated[int | str, Field(json_schema_extra={"pattern": QUANTITY_PATTERN, "maxLength": 64})]
"""A Kubernetes resource quantity: 2, "500m", "10Gi"."""

DnsLabel = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=DNS_LABEL_PATTERN)]
ObjectName = Annotated[str, Field(min_length=1, max_length=DNS_NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN)]
Fqdn = Annotated[str, Field(min_length=1, max_length=DNS_NAME_MAX, pattern=FQDN_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry, with the Python twin pydantic runs on the same object.

    `check` is None for transition rules (they compare with `oldSelf`, which only the API server has).
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"] | None = (
        None
    )

    def to_schema(self) -> JsonDict:
        entry: JsonDict = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        if self.reason:
            entry["reason"] = self.reason
        return entry


def exactly_one_of(first: str, second: str, message: str) -> CelRule:
    """The rule for a choice between two optional fields (named as in JSON): exactly one must be set."""
    first_attr, second_attr = to_snake(first), to_snake(second)
    return CelRule(f"has(self.{first}) != has(self.{second})", message,
                   check=lambda m: (getattr(m, first_attr) is None) != (getattr(m, second_attr) is None))


def validations(*rules: CelRule) -> JsonDict:
    """Schema extras that attach rules to one field (`Field(json_schema_extra=validations(...))`)."""
    return {"x-kubernetes-validations": [rule.to_schema() for rule in rules]}


def immutable(field: str, fix: str) -> JsonDict:
    """Schema extras that make one field immutable once set; `field` is its path, `fix` what to do instead."""
    return validations(CelRule("self == oldSelf", f"{field} is immutable: {fix}"))


def list_map(*keys: str) -> JsonDict:
    """Schema extras for a list keyed by `keys`: the API server rejects duplicate keys and merges by key."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


LIST_SET: JsonDict = {"x-kubernetes-list-type": "set"}


def _add_cel_rules(schema: JsonDict, model: type[BaseModel]) -> None:
    rules: tuple[CelRule, ...] = getattr(model, "cel_rules", ())
    if rules:
        schema.update(validations(*rules))


def _reject_duplicates(field: str, items: list[Any], keys: Any) -> None:
    """What the API server enforces for `x-kubernetes-list-type` map and set: every key appears once."""
    seen: set[Any] = set()
    for index, item in enumerate(items):
        key = tuple(item.to_dict()[k] for k in keys) if isinstance(keys, list) else item
        if key in seen:
            shown = ", ".join(map(str, key)) if isinstance(keys, list) else str(key)
            message = f"{field}[{index}]: duplicate entry {shown!r}; each entry of {field} needs its own name"
            raise PydanticCustomError("duplicate_entry", "{message}", {"message": message})
        seen.add(key)


class ApiModel(BaseModel):
    """A part of a custom resource: camelCase on the wire, strict about unknown fields, cross-field rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra=_add_cel_rules,
        # Validators are built when a model first validates or dumps, not at import: the agent validates only
        # management packs and never pays for ManagementGroup's (issue 9: its RSS budget).
        defer_build=True,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _apply_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError("cel_rule", "{message}", {"message": rule.message})
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and extra.get("x-kubernetes-list-type") in ("map", "set"):
                _reject_duplicates(info.alias or name, getattr(self, name), extra.get("x-kubernetes-list-map-keys"))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON the API server expects: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class LocalReference(ApiModel):
    """A reference to an object by name in the same namespace."""

    name: ObjectName
    """Name of the referenced object."""


class ManagementGroupReference(ApiModel):
    """The ManagementGroup this object belongs to."""

    name: ObjectName
    """Name of the ManagementGroup."""
    namespace: DnsLabel | None = None
    """Namespace of the ManagementGroup; this object's own namespace when unset."""

    def namespace_or(self, own_namespace: str) -> str:
        """The group's namespace, defaulting to the referring object's namespace."""
        return self.namespace or own_namespace


class SecretKeyReference(ApiModel):
    """A key in a Secret in the same namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: str = Field(default="uri", min_length=1, max_length=NAME_MAX * 4, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key in the Secret that holds the value (a CloudNativePG app Secret keeps the connection URI in `uri`)."""


class LabelSelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One label requirement, as in a Kubernetes label selector."""

    key: str = Field(min_length=1, max_length=317)
    """The label key the requirement applies to."""
    operator: LabelSelectorOperator
    """How the key relates to the values: In, NotIn, Exists or DoesNotExist."""
    values: list[Annotated[str, Field(max_length=NAME_MAX)]] = Field(default_factory=list, max_length=LIST_MAX)
    """Label values; required for In and NotIn, empty for Exists and DoesNotExist."""

    cel_rules = (
        CelRule(
            "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 "
            ": !has(self.values) || size(self.values) == 0",
            "matchExpressions values: In and NotIn need at least one value, Exists and DoesNotExist take none",
            check=lambda r: bool(r.values) == (r.operator in (LabelSelectorOperator.IN, LabelSelectorOperator.NOT_IN)),
            field_path=".values",
        ),
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.operator:
            case LabelSelectorOperator.IN:
                return labels.get(self.key) in self.values
            case LabelSelectorOperator.NOT_IN:
                return labels.get(self.key) not in self.values
            case LabelSelectorOperator.EXISTS:
                return self.key in labels
            case LabelSelectorOperator.DOES_NOT_EXIST:
                return self.key not in labels


class LabelSelector(ApiModel):
    """A Kubernetes label selector; an empty selector matches everything."""

    match_labels: dict[str, Annotated[str, Field(max_length=NAME_MAX)]] = Field(default_factory=dict,
                                                                                max_length=LIST_MAX)
    """Labels an object must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=LIST_MAX)
    """Requirements an object's labels must all meet."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels is selected."""
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


class ResourceRequirements(ApiModel):
    """CPU and memory for a container, as in a Pod spec."""

    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=8)
    """Resources the scheduler reserves, e.g. cpu: 500m, memory: 512Mi."""
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=8)
    """The most the container may use, e.g. memory: 1Gi."""


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata opsmgr reads; everything else is kept as it came."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True, extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    description: str
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path,
                                  "description": self.description}
        if self.priority:
            column["priority"] = self.priority
        return column


AGE_COLUMN = PrinterColumn("AGE", ".metadata.creationTimestamp", "date", "Time since the object was created.")
READY_COLUMN = PrinterColumn("READY", '.status.conditions[?(@.type=="Ready")].status', "string",
                             "Whether the object is ready (its Ready condition).")
# Long text goes to priority 1: shown by `kubectl get -o wide`, kept out of the console view.
MESSAGE_COLUMN = PrinterColumn("MESSAGE", '.status.conditions[?(@.type=="Ready")].message', "string",
                               "Why the Ready condition has its status.", priority=1)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class CustomResource(ApiModel):
    """A whole custom resource as the API server and kopf hand it over: apiVersion, kind, metadata, spec, status.

    Subclasses name their CRD (plural, short names, printer columns) in class variables; `opsmgr.api.crd`
    turns those and the spec/status models into the CRD manifest.
    """

    model_config = ConfigDict(extra="ignore")

    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]
    spec_rules: ClassVar[tuple[CelRule, ...]] = ()
    """Rules on the spec as a whole (e.g. an immutable spec), placed on the `spec` property of the CRD."""

    api_version: Literal["opsmgr.io/v1alpha1"] = API_VERSION
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """Parse an object as the API server or kopf delivers it (a kopf Body is a Mapping of Mappings)."""
        return cls.model_validate(_plain(body))

    def manifest(self) -> dict[str, Any]:
        """What to create or apply: apiVersion, kind, metadata and spec (status belongs to its subresource)."""
        document = self.to_dict()
        document.pop("status", None)
        return document

    def status_patch(self) -> dict[str, Any]:
        """A merge patch for the status subresource with every status field opsmgr has set."""
        return {"status": self.to_dict().get("status", {})}

    @classmethod
    def kind_name(cls) -> str:
        """The Kubernetes kind, e.g. "Agent"."""
        default = cls.model_fields["kind"].default
        assert isinstance(default, str)
        return default

    @classmethod
    def crd_name(cls) -> str:
        """The CRD's name, e.g. "agents.opsmgr.io"."""
        return f"{cls.plural}.{GROUP}"
