"""Hostile objects: every bound of every CRD field is accepted exactly at the bound and refused one step beyond it
with a message naming the field; huge strings, deep nesting and unknown fields are refused or never stored; and the
operator survives objects it did not expect, saying what is wrong in a status condition.

tests/integration/api/test_rejections.py holds the hand-written catalog of invalid objects; these cases are derived
from the CRD schemas themselves, walked alongside each example as the API server stores it (defaults filled in), so
a bound added to a model is tested without anyone writing a case for it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from opsmgr.api import RESOURCES
from opsmgr.api.crd import crd_stream
from opsmgr.dev.cluster import LocalCluster
from tests.integration.api.conftest import Kubectl, opsmgr_crds  # noqa: F401 (a fixture)
from tests.integration.operator.conftest import (  # noqa: F401 (a fixture)
    RunningOperator,
    condition,
    eventually,
    get_or_none,
    operator,
)
from tests.unit.api.cases import EXAMPLES, INVALID, changed

Path = tuple[str | int, ...]


def _schemas() -> dict[str, dict[str, Any]]:
    """Kind -> the spec schema of its served version, from the generator that writes crds/."""
    found: dict[str, dict[str, Any]] = {}
    for crd in yaml.safe_load_all(crd_stream(RESOURCES)):
        (version,) = crd["spec"]["versions"]
        found[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return found


SCHEMAS = _schemas()


def shown(path: Path) -> str:
    """A path as the API server names it: spec.rules[0].name."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


@dataclass(frozen=True)
class Case:
    """One field set to one value: refused with `says` (and the field named), or accepted when `says` is empty."""

    path: Path
    value: Any
    says: str = ""
    what: str = ""

    @property
    def field(self) -> str:
        return shown(self.path)

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        result = copy.deepcopy(document)
        node: Any = result
        for part in self.path[:-1]:
            node = node[part]
        node[self.path[-1]] = self.value
        return result

    def __str__(self) -> str:
        return f"{self.field} {self.what}"


def _unique(value: Any, index: int) -> Any:
    # Letters only, so the copy still matches whatever pattern the key has (DNS label, identifier).
    if index == 0 or not isinstance(value, str):
        return value
    suffix = ""
    while index:
        index, digit = divmod(index, 26)
        suffix += chr(ord("a") + digit)
    return f"{value[:50]}{suffix}"


def _grown(schema: dict[str, Any], items: list[Any], count: int) -> list[Any]:
    """`count` items made from the first, distinct wherever the list's keys or set semantics demand it."""
    keys = schema.get("x-kubernetes-list-map-keys") or []
    first = items[0]
    if keys:
        return [{**first, **{key: _unique(first[key], i) for key in keys}} for i in range(count)]
    if schema.get("x-kubernetes-list-type") == "set":
        return [_unique(first, i) for i in range(count)]
    return [copy.deepcopy(first) for _ in range(count)]


def _at_most(maximum: int, pattern: str | None) -> str | None:
    """A string of exactly `maximum` characters that the field's pattern allows, if 'a's will do."""
    candidate = "a" * maximum
    return candidate if pattern is None or re.fullmatch(pattern, candidate) else None


def bound_cases(schema: dict[str, Any], value: Any, path: Path) -> Iterator[Case]:
    """Every bound of every field present in `value`, at the bound and one step past it."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in (schema.get("properties") or {}):
                yield from bound_cases(schema["properties"][key], item, (*path, key))
    if isinstance(value, list) and value and "items" in schema:
        yield from bound_cases(schema["items"], value[0], (*path, 0))
    kind = schema.get("type")
    if kind in ("integer", "number") and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            yield Case(path, low, what=f"at its minimum {low}")
            yield Case(path, low - 1, f"greater than or equal to {low}", f"one below its minimum {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            yield Case(path, high, what=f"at its maximum {high}")
            yield Case(path, high + 1, f"less than or equal to {high}", f"one above its maximum {high}")
    if kind == "string" and "maxLength" in schema and "enum" not in schema and "format" not in schema:
        longest = schema["maxLength"]
        at_bound = _at_most(longest, schema.get("pattern"))
        if at_bound is not None:
            yield Case(path, at_bound, what=f"at its maxLength {longest}")
        yield Case(path, "a" * (longest + 1), "Too long", f"one character over its maxLength {longest}")
    if kind == "array" and "maxItems" in schema and isinstance(value, list) and value:
        most = schema["maxItems"]
        yield Case(path, _grown(schema, value, most), what=f"at its maxItems {most}")
        yield Case(path, _grown(schema, value, most + 1), f"must have at most {most} items",
                   f"one item over its maxItems {most}")


def _already_in_catalog(example: str, case: Case) -> bool:
    """test_rejections.py covers this exact refusal already."""
    dotted = ".".join(str(part) for part in case.path)
    return any(c.example == example and c.changes.get(dotted, object()) == case.value for c in INVALID)


@pytest.fixture
def kubectl(opsmgr_crds: LocalCluster, namespace: str) -> Kubectl:  # noqa: F811
    """kubectl in a fresh namespace of the cluster with the CRDs (no operator: only the API server decides)."""
    return Kubectl(opsmgr_crds, namespace)


def _dry_run(kubectl: Kubectl, document: dict[str, Any], *options: str) -> tuple[int, str]:
    return kubectl.run("create", "--dry-run=server", "-o", "json", *options, "-f", "-", input=json.dumps(document),
                       check=False)


def _stored_form(kubectl: Kubectl, example: str) -> dict[str, Any]:
    """The example as the API server would store it (defaults filled in), ready to be created again."""
    code, out = _dry_run(kubectl, EXAMPLES[example])
    assert code == 0, out
    stored: dict[str, Any] = json.loads(out)
    stored["metadata"] = {"name": stored["metadata"]["name"], "labels": stored["metadata"].get("labels", {})}
    stored.pop("status", None)
    return stored


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_bound_is_accepted_at_the_bound_and_refused_one_step_past_with_the_field_named(
        kubectl: Kubectl, example: str) -> None:
    document = _stored_form(kubectl, example)
    cases = [case for case in bound_cases(SCHEMAS[document["kind"]], document["spec"], ("spec",))
             if not _already_in_catalog(example, case)]
    assert cases, f"{example} has no bounded field: the walk found nothing"
    wrong: list[str] = []
    for case in cases:
        code, out = _dry_run(kubectl, case.apply(document))
        if not case.says and code != 0:
            wrong.append(f"{case}: refused at the bound: {out.strip()}")
        elif case.says and code == 0:
            wrong.append(f"{case}: accepted")
        elif case.says and (case.field not in out or case.says not in out):
            wrong.append(f"{case}: refused without naming {case.field} and '{case.says}': {out.strip()}")
    assert not wrong, f"{len(wrong)} of {len(cases)} bound cases of {example} went wrong:\n" + "\n".join(wrong)


# --- huge, deep and unknown ---

def test_a_megabyte_string_is_refused_naming_the_field(kubectl: Kubectl) -> None:
    document = changed(EXAMPLES["management-group"], {"spec.description": "x" * (1 << 20)})
    code, out = kubectl.run("create", "-f", "-", input=json.dumps(document), check=False)
    assert code != 0
    assert "spec.description" in out and "Too long" in out, out[:2000]


def test_a_body_beyond_the_request_limit_is_refused_and_the_api_server_carries_on(kubectl: Kubectl) -> None:
    document = changed(EXAMPLES["management-group"], {"spec.description": "x" * (4 << 20)})
    code, out = kubectl.run("create", "-f", "-", input=json.dumps(document), check=False)
    assert code != 0
    assert "too large" in out.lower(), out[:2000]
    assert kubectl.create(EXAMPLES["management-group"])["metadata"]["name"] == "production"


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        node = {"deeper": node}
    return node


@pytest.mark.parametrize("field", ["spec.hostile", "spec.servers.hostile"])
def test_an_unknown_field_is_refused_by_name(kubectl: Kubectl, field: str) -> None:
    document = changed(EXAMPLES["management-group"], {field: "x"})
    code, out = kubectl.run("create", "-f", "-", input=json.dumps(document), check=False)
    assert code != 0
    assert f'unknown field "{field}"' in out, out


def test_unknown_fields_are_never_stored_even_when_a_client_skips_validation(kubectl: Kubectl) -> None:
    document = changed(EXAMPLES["management-group"], {"spec.hostile": _nested(50), "spec.servers.hostile": "x"})
    kubectl.run("create", "--validate=false", "-f", "-", input=json.dumps(document))
    stored = kubectl.get("managementgroup", "production")
    assert "hostile" not in stored["spec"] and "hostile" not in stored["spec"]["servers"]


def test_deep_nesting_is_refused_by_name_and_absurd_nesting_is_refused_outright(kubectl: Kubectl) -> None:
    document = changed(EXAMPLES["agent-host"], {"spec.hostile": _nested(100)})
    code, out = kubectl.run("create", "-f", "-", input=json.dumps(document), check=False)
    assert code != 0 and 'unknown field "spec.hostile"' in out, out[:2000]
    # Far deeper than any real object: refused as a whole (depth limit of the decoder), nothing stored.
    text = json.dumps(EXAMPLES["agent-host"])[:-1] + ', "hostile": ' + '{"d": ' * 20000 + "1" + "}" * 20000 + "}"
    code, out = kubectl.run("create", "--validate=false", "-f", "-", input=text, check=False)
    assert code != 0, "an object nested 20,000 deep was accepted"
    assert kubectl.run("get", "agent", EXAMPLES["agent-host"]["metadata"]["name"], check=False)[0] != 0
    assert kubectl.create(EXAMPLES["agent-host"])["spec"]["fqdn"] == EXAMPLES["agent-host"]["spec"]["fqdn"]


@pytest.mark.parametrize(("changes", "field", "says"), [
    ({"metadata.name": "a" * 254}, "metadata.name", "must be no more than 253 characters"),
    ({"metadata.name": "Production_1"}, "metadata.name", "a lowercase RFC 1123 subdomain"),
    ({"metadata.labels": {"role": "x" * 64}}, "metadata.labels", "must be no more than 63"),
])
def test_hostile_metadata_is_refused_naming_it(kubectl: Kubectl, changes: dict[str, Any], field: str,
                                               says: str) -> None:
    code, out = kubectl.run("create", "-f", "-", input=json.dumps(changed(EXAMPLES["agent-host"], changes)),
                            check=False)
    assert code != 0
    assert field in out and says in out, out[:2000]



# --- the operator survives what it did not expect ---

@dataclass(frozen=True)
class Live:
    kubectl: Kubectl
    operator: RunningOperator

    def assert_alive(self) -> None:
        assert self.operator.process.poll() is None, f"the operator exited:\n{self.operator.tail()}"
        assert self.operator.metrics(), "the operator stopped serving metrics"


@pytest.fixture
def live(operator: RunningOperator, kube_cluster: LocalCluster, namespace: str) -> Live:  # noqa: F811
    """kubectl in a fresh namespace with the shipped operator watching (no runtime: Pods stay Pending)."""
    return Live(Kubectl(kube_cluster, namespace), operator)


def _condition_becomes(kubectl: Kubectl, kind: str, name: str, type: str, *, status: str,
                       timeout: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = eventually(
        lambda: (c if (c := condition(get_or_none(kubectl, kind, name), type)) and c["status"] == status else None),
        timeout=timeout, what=f"{kind} {name} condition {type}={status}")
    return found


def test_an_agent_naming_a_group_that_does_not_exist_says_so(live: Live) -> None:
    live.kubectl.create(changed(EXAMPLES["agent-host"], {"spec.managementGroupRef.name": "nowhere"}))
    assigned = _condition_becomes(live.kubectl, "agent", "db01-example-com", "Assigned", status="False")
    assert assigned["reason"] == "ManagementGroupNotFound"
    assert "spec.managementGroupRef" in assigned["message"]
    live.assert_alive()


def test_a_gateway_naming_a_group_that_does_not_exist_says_so(live: Live) -> None:
    live.kubectl.create(changed(EXAMPLES["gateway"], {"spec.managementGroupRef.name": "nowhere"}))
    ready = _condition_becomes(live.kubectl, "gateway", "dmz", "Ready", status="False")
    assert ready["reason"] == "ManagementGroupNotFound"
    assert "spec.managementGroupRef" in ready["message"] and "nowhere" in ready["message"]
    # Once the group exists the same gateway gets its certificate: the problem was reported, not memorised.
    live.kubectl.create({**EXAMPLES["management-group"], "metadata": {"name": "nowhere"}})
    issued = _condition_becomes(live.kubectl, "gateway", "dmz", "CertificateReady", status="True", timeout=120)
    assert issued["reason"] == "Issued"
    live.assert_alive()


def _full_pack() -> dict[str, Any]:
    """The example pack with every list at its maxItems, every task argument naming an undeclared parameter."""
    schema = SCHEMAS["ManagementPack"]["properties"]
    pack = copy.deepcopy(EXAMPLES["management-pack-linux"])
    spec = pack["spec"]
    for field in ("rules", "monitors", "tasks"):
        spec[field] = _grown(schema[field], spec[field], schema[field]["maxItems"])
    arguments = schema["tasks"]["items"]["properties"]["arguments"]["maxItems"]
    for task in spec["tasks"]:
        task["arguments"] = [f"{{undeclared{i}}}" for i in range(arguments)]
    spec["overrides"] = []
    spec["managementGroupRef"] = {"name": "nowhere"}
    return pack


def test_a_pack_at_its_max_items_with_thousands_of_problems_gets_a_bounded_verdict(live: Live) -> None:
    pack = _full_pack()
    live.kubectl.create(pack)
    name = pack["metadata"]["name"]
    valid = _condition_becomes(live.kubectl, "managementpack", name, "Valid", status="False")
    assert valid["reason"] == "InvalidReference"
    assert "spec.tasks[0]" in valid["message"] and "{undeclared0}" in valid["message"]
    assert len(valid["message"]) <= 4096, "one sentence per problem, thousands of them, must not flood the status"
    group = _condition_becomes(live.kubectl, "managementpack", name, "ManagementGroupFound", status="False")
    assert group["reason"] == "ManagementGroupNotFound"
    status = live.kubectl.get("managementpack", name)["status"]
    assert (status["rules"], status["monitors"], status["tasks"]) == tuple(
        len(pack["spec"][field]) for field in ("rules", "monitors", "tasks"))
    live.assert_alive()


def _task_for_a_deleted_agent(kubectl: Kubectl, timeout_seconds: int) -> str:
    """The example task, created after its agent (db01-example-com) was created and deleted; returns its name."""
    kubectl.create(EXAMPLES["management-pack-linux"])
    kubectl.create(EXAMPLES["agent-host"])
    kubectl.run("delete", "agent", "db01-example-com", "--wait=true", "--timeout=60s")
    kubectl.create(changed(EXAMPLES["agent-task"], {"spec.timeoutSeconds": timeout_seconds}))
    return str(EXAMPLES["agent-task"]["metadata"]["name"])


def test_a_task_for_an_agent_that_was_deleted_ends_timed_out_saying_why(live: Live) -> None:
    kubectl = live.kubectl
    name = _task_for_a_deleted_agent(kubectl, 1)
    eventually(lambda: (get_or_none(kubectl, "agenttask", name) or {}).get("status", {}).get("phase") == "TimedOut",
               timeout=60, what="the run TimedOut")
    status = kubectl.get("agenttask", name)["status"]
    assert "no result reported by the agent" in status["output"]
    assert condition(kubectl.get("agenttask", name), "Ready")["reason"] == "TimedOut"  # type: ignore[index]
    live.assert_alive()


def test_a_task_for_a_deleted_agent_says_the_agent_is_missing_until_it_returns(live: Live) -> None:
    kubectl = live.kubectl
    name = _task_for_a_deleted_agent(kubectl, 3600)
    accepted = _condition_becomes(kubectl, "agenttask", name, "Accepted", status="False")
    assert accepted["reason"] == "AgentNotFound" and "db01-example-com" in accepted["message"]
    assert kubectl.get("agenttask", name)["status"]["phase"] == "Pending"  # it may still appear: not failed yet
    kubectl.create(EXAMPLES["agent-host"])
    assert _condition_becomes(kubectl, "agenttask", name, "Accepted", status="True")["reason"] == "Accepted"
    live.assert_alive()


KINDS = "managementgroups,agents,managementpacks,gateways,agenttasks"


def test_objects_deleted_mid_reconcile_leave_the_operator_up_and_nothing_stuck(live: Live) -> None:
    kubectl = live.kubectl
    # Each object is deleted while the operator is still busy with its creation (CA, databases, children).
    bodies = [EXAMPLES["management-group"], EXAMPLES["agent-host"], EXAMPLES["management-pack-linux"],
              EXAMPLES["gateway"], EXAMPLES["agent-task"]]
    for round in range(3):
        for body in bodies:
            created = kubectl.create({**body, "metadata": {"name": f"{body['metadata']['name']}-{round}"}})
            kubectl.run("delete", created["kind"].lower(), created["metadata"]["name"], "--wait=false")
    # Nothing left Terminating: every finalizer the operator added it also removed.
    eventually(lambda: not kubectl.run("get", KINDS, "-o", "name")[1].strip(), timeout=120,
               what="every deleted object gone")
    live.assert_alive()
    # And it still reconciles what comes next.
    kubectl.create(changed(EXAMPLES["agent-host"], {"spec.managementGroupRef.name": "nowhere"}))
    assigned = _condition_becomes(kubectl, "agent", "db01-example-com", "Assigned", status="False")
    assert assigned["reason"] == "ManagementGroupNotFound"
