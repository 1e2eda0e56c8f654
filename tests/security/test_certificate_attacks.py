"""Every certificate attack on the agent channel, against a real `opsmgr server` process over real mTLS.

Each hostile identity is refused with a reason the peer sees (stream refusals) or the server logs (TLS refusals,
which end before any of our code runs), and after each refusal a good agent still opens a stream and gets its
batch acknowledged by both databases. Other tests cover single cases in depth (tests/integration/test_pki_tls.py,
tests/integration/server/test_refusals.py, tests/integration/gateway/test_refusals.py); this file is the matrix.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from cryptography.x509.oid import ObjectIdentifier
from grpc import aio

from opsmgr.pki import Approval, Identity, Role, create_ca, issue_with_new_key
from opsmgr.pki.pem import certificate_pem, private_key_pem
from opsmgr.pki.profiles import CLIENT_AUTH, SERVER_AUTH
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.versions import MAX_VERSION, MIN_VERSION
from tests.integration.server.client import SETTLED, AgentStream, Credentials, ItemFactory, channel
from tests.integration.server.conftest import AGENTS, GATEWAY, GROUP, SERVER_NAMES, MakeServer, Pki, ServerProcess
from tests.integration.server.test_refusals import logged_reasons, refused
from tests.unit.pki.forge import forge_leaf

ATTACKED = AGENTS[0]  # the registered, approved agent whose name the hostile certificates carry
OTHER = AGENTS[1]  # another registered, approved agent
GOOD = AGENTS[2]  # the agent that must keep flowing
RELAYED = AGENTS[3]  # assigned to GATEWAY in the server's directory


def forged(pki: Pki, *, valid_from: timedelta = -timedelta(hours=1), valid_for: timedelta = timedelta(days=30),
           ekus: Sequence[ObjectIdentifier] = (CLIENT_AUTH,)) -> Credentials:
    """An agent certificate for ATTACKED that our PKI would never issue, signed by the group CA."""
    now = datetime.now(UTC)
    leaf = forge_leaf(pki.ca, ATTACKED, uris=[Identity.of(GROUP, Role.AGENT, ATTACKED).uri], dns_names=[ATTACKED],
                      ekus=ekus, not_before=now + valid_from, not_after=now + valid_from + valid_for)
    return Credentials(private_key_pem(leaf.key), certificate_pem(leaf.certificate), pki.ca.certificate_pem())


def from_another_ca(pki: Pki) -> Credentials:
    """Same group name, same agent name, a CA the server does not trust: only the signature tells them apart."""
    now = datetime.now(UTC)
    stranger = create_ca(GROUP, now)
    issued = issue_with_new_key(stranger, Approval(Identity.of(GROUP, Role.AGENT, ATTACKED), "attacker", now), now)
    return Credentials(issued.key_pem(), issued.certificate_pem(), pki.ca.certificate_pem())


def of_another_group(pki: Pki) -> Credentials:
    """Signed by our CA (a mis-issued certificate) but naming another management group in its role URI."""
    now = datetime.now(UTC)
    issued = issue_with_new_key(pki.ca, Approval(Identity.of("fabrikam", Role.AGENT, ATTACKED), "attacker", now), now)
    return Credentials(issued.key_pem(), issued.certificate_pem(), pki.ca.certificate_pem())


@dataclass(frozen=True)
class Attack:
    credentials: Callable[[Pki], Credentials]
    peer_sees: str  # in the gRPC status details the hostile peer receives
    logged: str  # in the server's log: a refusal reason of ours, or the TLS library's verification error
    claim: str = ""  # Hello.agent
    revoke_first: bool = False
    at_handshake: bool = False  # refused by TLS, before any of our code runs
    code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED


ATTACKS = {
    "a certificate from another CA": Attack(
        from_another_ca, "Socket closed", "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate",
        at_handshake=True, code=grpc.StatusCode.UNAVAILABLE),
    "an expired agent certificate": Attack(
        lambda pki: forged(pki, valid_from=-timedelta(days=30), valid_for=timedelta(days=29)),
        "Socket closed", "CERTIFICATE_VERIFY_FAILED: certificate has expired", at_handshake=True,
        code=grpc.StatusCode.UNAVAILABLE),
    "a not yet valid agent certificate": Attack(
        lambda pki: forged(pki, valid_from=timedelta(days=1)),
        "Socket closed", "CERTIFICATE_VERIFY_FAILED: certificate is not yet valid", at_handshake=True,
        code=grpc.StatusCode.UNAVAILABLE),
    "an agent certificate with serverAuth only": Attack(
        lambda pki: forged(pki, ekus=[SERVER_AUTH]), "Socket closed",
        "CERTIFICATE_VERIFY_FAILED: unsupported certificate purpose", at_handshake=True,
        code=grpc.StatusCode.UNAVAILABLE),
    # TLS lets a certificate without any EKU extension act for every purpose; our own check must not.
    "an agent certificate without any extended key usage": Attack(
        lambda pki: forged(pki, ekus=[]), "lacks clientAuth", "WrongEKU"),
    "a revoked agent certificate": Attack(
        lambda pki: pki.agent(ATTACKED), "revoked (keyCompromise)", "Revoked", revoke_first=True),
    "an agent certificate of another management group": Attack(
        of_another_group, "belongs to management group 'fabrikam', not 'contoso'", "WrongGroup"),
    "a management server certificate used as an agent": Attack(
        lambda pki: pki.issue(Role.MANAGEMENT_SERVER, SERVER_NAMES.identity().name),
        "a server certificate may not open an agent stream", "WrongRole"),
    "a gateway certificate used as an agent": Attack(
        lambda pki: pki.issue(Role.GATEWAY, GATEWAY), "relays agents; it sends no data of its own", "WrongRole"),
    "an agent certificate acting as a gateway": Attack(
        lambda pki: pki.agent(ATTACKED), "only a gateway certificate may speak for another agent",
        "ImpersonationRefused", claim=RELAYED),
    "a Hello naming another agent": Attack(
        lambda pki: pki.agent(ATTACKED), "only a gateway certificate may speak for another agent",
        "ImpersonationRefused", claim=OTHER),
    "a gateway speaking for an agent not assigned to it": Attack(
        lambda pki: pki.issue(Role.GATEWAY, GATEWAY), f"is not assigned to gateway {GATEWAY}",
        "NotAssignedToGateway", claim=ATTACKED),
    "a certificate for an agent nobody registered": Attack(
        lambda pki: pki.agent("stranger.contoso.test"), "is not registered in this management group",
        "UnknownAgent"),
}


def behaviour(name: str) -> str:
    return name.replace(" ", "_")


async def good_agent_flows(server: ServerProcess, pki: Pki) -> None:
    """A good agent opens a stream and both databases acknowledge its batch as committed."""
    async with channel(server.agent_port, pki.agent(GOOD)) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        batch = pb.DataBatch(epoch=str(uuid.uuid4()), seq=0, lane=pb.LANE_BULK, items=ItemFactory().bulk(4))
        await stream.send(pb.AgentMessage(batch=batch))
        acks = await stream.acks_until(2)
    assert {(ack.database, ack.outcome) for ack in acks} == {
        (pb.DATABASE_OPERATIONAL, pb.Ack.OUTCOME_COMMITTED), (pb.DATABASE_WAREHOUSE, pb.Ack.OUTCOME_COMMITTED)}


async def server_logged(server: ServerProcess, text: str, within: float = 20) -> bool:
    """Eventually: gRPC core writes its handshake line from another thread, a moment after the peer saw the close."""
    async with asyncio.timeout(within):
        while True:
            if text in server.log_path.read_text(errors="replace") or text in logged_reasons(server):
                return True
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("name", list(ATTACKS), ids=behaviour)
async def test_a_hostile_certificate_is_refused_with_a_reason_and_good_agents_keep_flowing(
        make_server: MakeServer, pki: Pki, name: str) -> None:
    attack = ATTACKS[name]
    server = make_server()
    credentials = attack.credentials(pki)
    if attack.revoke_first:
        server.revoke(credentials)  # in the revocation file before the server reads it: no waiting on the poll
    server.start()
    await good_agent_flows(server, pki)

    code, details = await refused(lambda stream: stream.hello(agent=attack.claim), credentials, server.agent_port)

    assert code is attack.code, details
    assert attack.peer_sees in details
    assert await server_logged(server, attack.logged)
    assert not any(line.get("msg") == "agent connected" and line.get("identity") != GOOD
                   for line in server.log_lines()), "the hostile stream was admitted before it was refused"
    await good_agent_flows(server, pki)
    assert server.process is not None and server.process.poll() is None


async def test_a_batch_reusing_another_agents_epoch_and_seq_cannot_make_the_victims_batch_a_duplicate(
        running_server: ServerProcess, pki: Pki, postgres_dsn: str) -> None:
    # Items carry no agent; the only identity-like values inside a batch are its (epoch, seq), which an attacker
    # could copy from a victim to have the victim's own batch skipped as "already committed".
    epoch = str(uuid.uuid4())
    items = ItemFactory()
    async with channel(running_server.agent_port, pki.agent(ATTACKED)) as chan:
        attacker = AgentStream(chan)
        await attacker.hello()
        await attacker.send(pb.AgentMessage(batch=pb.DataBatch(epoch=epoch, seq=0, lane=pb.LANE_BULK,
                                                               items=items.bulk(2))))
        stolen = await attacker.acks_until(2)
    assert all(ack.outcome == pb.Ack.OUTCOME_COMMITTED for ack in stolen)

    async with channel(running_server.agent_port, pki.agent(GOOD)) as chan:
        victim = AgentStream(chan)
        await victim.hello(epoch=epoch)
        await victim.send(pb.AgentMessage(batch=pb.DataBatch(epoch=epoch, seq=0, lane=pb.LANE_BULK,
                                                             items=items.bulk(2))))
        acks = await victim.acks_until(2)
    assert all(ack.outcome == pb.Ack.OUTCOME_COMMITTED for ack in acks), "the victim's batch was taken as a replay"
    assert all(ack.outcome in SETTLED for ack in acks)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        owners = {row["agent"] for row in await conn.fetch(
            "SELECT agent FROM committed_batches WHERE epoch = $1 AND batch_seq = 0", uuid.UUID(epoch))}
    finally:
        await conn.close()
    assert owners == {ATTACKED, GOOD}, "each batch belongs to the certificate that sent it"


async def test_a_refused_stream_never_gets_to_send_a_batch(running_server: ServerProcess, pki: Pki) -> None:
    # An impostor that writes a batch right behind its Hello (without waiting for Welcome) gets no ack for it.
    async with channel(running_server.agent_port, pki.agent(ATTACKED)) as chan:
        stream = AgentStream(chan)
        hello = pb.Hello(min_version=MIN_VERSION, max_version=MAX_VERSION, agent=OTHER)
        await stream.send(pb.AgentMessage(hello=hello))
        await stream.send(pb.AgentMessage(batch=pb.DataBatch(epoch=str(uuid.uuid4()), seq=0, lane=pb.LANE_BULK,
                                                             items=ItemFactory().bulk(2))))
        with pytest.raises(aio.AioRpcError) as raised:
            while (reply := await stream.receive()) is not None:
                assert reply.WhichOneof("body") not in ("welcome", "ack"), reply
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "ImpersonationRefused" in logged_reasons(running_server)
    await good_agent_flows(running_server, pki)
