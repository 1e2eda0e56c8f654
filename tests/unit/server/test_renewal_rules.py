"""Who may have a certificate renewed over its stream: only an approved Host agent, for itself."""

from __future__ import annotations

from typing import Any

import pytest

from opsmgr.pki.names import Identity, Role
from opsmgr.server.enrollment_rules import AgentFacts
from opsmgr.server.renewal import judge_renewal

VM = "web01.contoso.test"


def facts(*, placement: str = "Host", approval: str = "Approved", deleting: bool = False) -> AgentFacts:
    body: dict[str, Any] = {"metadata": {"name": VM, "namespace": "ops", "uid": "u1"},
                            "spec": {"managementGroupRef": {"name": "contoso"}, "fqdn": VM, "placement": placement},
                            "status": {"approval": approval}}
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    return AgentFacts.of(body)


def judge(identity: Identity, agent: str, found: AgentFacts | None) -> str | None:
    refusal = judge_renewal(identity, agent, found, group="contoso", namespace="ops")
    return None if refusal is None else refusal.reason


def test_an_approved_host_agent_renews_its_own_certificate() -> None:
    assert judge(Identity.of("contoso", Role.AGENT, VM), VM, facts()) is None


def test_a_gateway_cannot_renew_for_the_agents_it_relays() -> None:
    gateway = Identity.of("contoso", Role.GATEWAY, "gw01.contoso.test")
    refusal = judge_renewal(gateway, VM, facts(), group="contoso", namespace="ops")
    assert refusal is not None and refusal.reason == "Relayed"
    assert "gw01.contoso.test" in refusal.message and VM in refusal.message


def test_an_agent_cannot_renew_another_agents_certificate() -> None:
    assert judge(Identity.of("contoso", Role.AGENT, "db01.contoso.test"), VM, facts()) == "Relayed"


@pytest.mark.parametrize(("found", "reason"), [
    (None, "UnknownAgent"),
    (facts(deleting=True), "UnknownAgent"),
    (facts(approval="Rejected"), "NotApproved"),
    (facts(approval="Pending"), "NotApproved"),
    (facts(placement="Sidecar"), "OperatorManaged"),
    (facts(placement="Node"), "OperatorManaged"),
])
def test_agents_that_are_gone_unapproved_or_operator_managed_are_refused_saying_why(
        found: AgentFacts | None, reason: str) -> None:
    assert judge(Identity.of("contoso", Role.AGENT, VM), VM, found) == reason


def test_the_operator_managed_refusal_names_the_setting_that_stops_the_agent_asking() -> None:
    refusal = judge_renewal(Identity.of("contoso", Role.AGENT, VM), VM, facts(placement="Sidecar"), group="contoso",
                            namespace="ops")
    assert refusal is not None and "certificates.renew: false" in refusal.message
