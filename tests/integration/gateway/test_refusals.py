"""What the management server refuses from a gateway, each with a reason in its log: an agent's certificate acting as
a gateway, a gateway speaking for an agent not assigned to it, and a gateway certificate from another CA."""

from __future__ import annotations

from datetime import UTC, datetime

from opsmgr.pki import Approval, Identity, Role, create_ca, issue_with_new_key
from tests.integration.gateway.conftest import MakeGateway, MakeRelayedAgent, wait_for_log
from tests.integration.server.client import Credentials
from tests.integration.server.conftest import AGENTS, GATEWAY, GROUP, MakeServer, Pki, ServerProcess
from tests.integration.server.test_refusals import logged_reasons

ASSIGNED = AGENTS[3]  # the one agent the servers' directory assigns to the gateway
UNASSIGNED = AGENTS[0]


def wait_for_refusal(server: ServerProcess, reason: str, timeout: float = 30) -> None:
    wait_for_log(server, f'"reason": "{reason}"', timeout=timeout)
    assert reason in logged_reasons(server)


def test_an_agent_certificate_used_as_a_gateway_is_refused(
        make_server: MakeServer, make_gateway: MakeGateway, make_relayed_agent: MakeRelayedAgent, pki: Pki) -> None:
    server = make_server()
    server.start()
    gateway = make_gateway(server, upstream=pki.agent(AGENTS[1]))
    gateway.start()
    wait_for_log(gateway, "will not be accepted by the management servers")
    agent = make_relayed_agent(gateway, ASSIGNED)
    agent.start()
    wait_for_refusal(server, "ImpersonationRefused")
    agent.wait_for_log("only a gateway certificate may speak for another agent")


def test_a_gateway_asserting_an_agent_not_assigned_to_it_is_refused(
        make_server: MakeServer, make_gateway: MakeGateway, make_relayed_agent: MakeRelayedAgent) -> None:
    server = make_server()
    server.start()
    gateway = make_gateway(server)
    gateway.start()
    agent = make_relayed_agent(gateway, UNASSIGNED)
    agent.start()
    wait_for_refusal(server, "NotAssignedToGateway")
    agent.wait_for_log(f"is not assigned to gateway {GATEWAY}")
    assert not any(line.get("msg") == "agent connected" for line in server.log_lines())


def test_a_gateway_certificate_from_another_ca_is_refused(
        make_server: MakeServer, make_gateway: MakeGateway, make_relayed_agent: MakeRelayedAgent) -> None:
    server = make_server()
    server.start()
    now = datetime.now(UTC)
    other_ca = create_ca(GROUP, now)
    issued = issue_with_new_key(other_ca, Approval(Identity.of(GROUP, Role.GATEWAY, GATEWAY), "test", now), now)
    gateway = make_gateway(server, upstream=Credentials(issued.key_pem(), issued.certificate_pem(),
                                                            other_ca.certificate_pem()))
    gateway.start()
    agent = make_relayed_agent(gateway, ASSIGNED)
    agent.start()
    # TLS refuses it before our code runs: the server's log line is gRPC core's, naming the verification failure.
    wait_for_log(server, "CERTIFICATE_VERIFY_FAILED")
    wait_for_log(gateway, f"could not connect to management server 127.0.0.1:{server.agent_port}", count=2)
    agent.wait_for_log("the gateway reaches no management server now")
    assert not any(line.get("msg") == "agent connected" for line in server.log_lines())
