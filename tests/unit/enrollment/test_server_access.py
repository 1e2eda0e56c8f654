"""What the operator renders for enrollment: the servers' config section, the port, and access by name only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from opsmgr.api import ManagementGroup
from opsmgr.operator import render
from opsmgr.protocol.enrollment import ENROLLMENT_PORT
from opsmgr.server.config import EnrollmentConfig

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "management-group.yaml"
CHART_RBAC = Path(__file__).resolve().parents[3] / "charts" / "opsmgr" / "templates" / "rbac.yaml"


def group() -> ManagementGroup:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"] |= {"namespace": "ops", "uid": "u-1", "generation": 1}
    return ManagementGroup.from_body(document)


def test_each_server_is_configured_to_enroll_with_the_groups_ca_on_the_enrollment_port() -> None:
    config = render.server_config(group(), "production-server-0", render.DatabaseUris("postgresql://a/b",
                                                                                    "postgresql://a/c"))
    section = EnrollmentConfig.model_validate(config["enrollment"])
    assert (section.port, section.ca_secret) == (ENROLLMENT_PORT, "production-ca")
    assert config["kubernetes"]["namespace"] == "ops"  # enrollment runs only with Kubernetes access


def test_the_enrollment_port_is_exposed_by_the_pods_and_the_shared_service() -> None:
    statefulset = render.render_server_statefulset(group(), "opsmgr:1", "h")
    ports = statefulset["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "enrollment", "containerPort": ENROLLMENT_PORT, "protocol": "TCP"} in ports
    service = render.render_agent_service(group())
    assert any(p["name"] == "enrollment" and p["port"] == ENROLLMENT_PORT for p in service["spec"]["ports"])


def test_servers_read_secrets_only_by_name_and_may_create_agents() -> None:
    role = next(m for m in render.render_server_access(group()) if m["kind"] == "Role")
    secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secret_rules and all(r.get("resourceNames") for r in secret_rules)
    assert {name for r in secret_rules for name in r["resourceNames"]} == {"production-ca",
                                                                           "production-join-tokens"}
    assert not any("list" in r["verbs"] or "watch" in r["verbs"] for r in secret_rules)
    assert any(r["resources"] == ["agents"] and "create" in r["verbs"] for r in role["rules"])


def test_the_token_review_binding_names_the_shipped_role_the_operator_may_bind() -> None:
    binding = render.render_server_enrollment_binding(group())
    assert binding["roleRef"]["name"] == render.ENROLLMENT_CLUSTER_ROLE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "production-server", "namespace": "ops"}]
    assert "namespace" not in binding["metadata"]
    chart = CHART_RBAC.read_text()
    assert f"name: {render.ENROLLMENT_CLUSTER_ROLE}" in chart and '"opsmgr-server-enrollment"]' in chart
