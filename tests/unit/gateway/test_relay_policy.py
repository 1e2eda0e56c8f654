"""What the gateway passes in each direction, decided on wire bytes."""

from __future__ import annotations

import pytest

from opsmgr.gateway.relay_policy import EndRelay, Refusal, agent_message_kind, relayed_hello, toward_agent
from opsmgr.protocol import agent_channel_pb2 as pb

AGENT = "web01.contoso.test"


@pytest.mark.parametrize("message", [
    pb.AgentMessage(hello=pb.Hello(agent=AGENT)),
    pb.AgentMessage(heartbeat=pb.Heartbeat(seq=1)),
    pb.AgentMessage(batch=pb.DataBatch(epoch="e", seq=3, items=[pb.Item(event=pb.Event(object_key="k"))])),
    pb.AgentMessage(task_result=pb.TaskResult(task_id="t")),
    pb.AgentMessage(renewal_request=pb.RenewalRequest(csr_pem=b"x")),
    pb.AgentMessage(goodbye=pb.Goodbye(reason="stopping")),
])
def test_the_kind_of_an_agent_message_is_read_from_its_first_tag(message: pb.AgentMessage) -> None:
    assert agent_message_kind(message.SerializeToString()) == message.WhichOneof("body")


def test_bytes_that_are_no_message_have_no_kind() -> None:
    assert agent_message_kind(b"") == "empty"
    assert agent_message_kind(b"\xff\xff\xff\xff\xff\xff") == "unknown"
    assert agent_message_kind(bytes([15 << 3 | 2, 0])) == "unknown"


def test_the_hello_names_the_agent_its_certificate_proves() -> None:
    for claimed in ("", AGENT, "WEB01.contoso.test."):
        relayed = relayed_hello(pb.AgentMessage(hello=pb.Hello(agent=claimed, epoch="e1")).SerializeToString(),
                                AGENT)
        assert isinstance(relayed, bytes)
        hello = pb.AgentMessage.FromString(relayed).hello
        assert (hello.agent, hello.epoch) == (AGENT, "e1")


def test_an_agent_speaking_for_another_is_refused() -> None:
    refusal = relayed_hello(pb.AgentMessage(hello=pb.Hello(agent="db01.contoso.test")).SerializeToString(), AGENT)
    assert isinstance(refusal, Refusal) and refusal.reason == "ImpersonationRefused"


def test_a_stream_that_does_not_start_with_hello_is_refused() -> None:
    beat = relayed_hello(pb.AgentMessage(heartbeat=pb.Heartbeat()).SerializeToString(), AGENT)
    garbage = relayed_hello(b"\xff\x01garbage", AGENT)
    assert isinstance(beat, Refusal) and beat.reason == "NoHello"
    assert isinstance(garbage, Refusal) and garbage.reason == "Malformed"


def test_acks_pass_as_the_server_sent_them() -> None:
    ack = pb.ServerMessage(ack=pb.Ack(epoch="e", seq=7, database=pb.DATABASE_OPERATIONAL,
                                      outcome=pb.Ack.OUTCOME_COMMITTED)).SerializeToString()
    assert toward_agent(ack) == ack


def test_server_addresses_never_reach_a_relayed_agent() -> None:
    config = pb.AgentConfig(heartbeat_interval_seconds=60, failover_servers=["ms-1.ms.opsmgr.svc:5723"])
    for message in (pb.ServerMessage(welcome=pb.Welcome(server="ms-0", config=config)),
                    pb.ServerMessage(config_update=pb.ConfigUpdate(config=config))):
        passed = toward_agent(message.SerializeToString())
        assert isinstance(passed, bytes)
        parsed = pb.ServerMessage.FromString(passed)
        body = parsed.welcome.config if parsed.HasField("welcome") else parsed.config_update.config
        assert list(body.failover_servers) == [] and body.heartbeat_interval_seconds == 60


def test_a_redirect_ends_the_relayed_stream_instead_of_reaching_the_agent() -> None:
    redirect = pb.ServerMessage(redirect=pb.Redirect(server="ms-2.ms.opsmgr.svc:5723", reason="rebalance"))
    ended = toward_agent(redirect.SerializeToString())
    assert isinstance(ended, EndRelay) and "ms-2.ms.opsmgr.svc:5723" in ended.reason
