"""Real mTLS on 127.0.0.1: a gRPC server with a management-server certificate and client certificates required.

TLS refuses what it can see (another CA, expired, no clientAuth) at the handshake; `authorize_peer` refuses what
only opsmgr knows (role, revocation, expected identity) when the stream opens, before any message is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc import aio

from opsmgr.pki import (
    CertificateAuthority,
    CertificateError,
    Identity,
    ManagementServerNames,
    RevocationReason,
    RevocationSet,
    Role,
    authorize_peer,
    create_ca,
    issue_with_new_key,
    peer_certificate,
)
from opsmgr.pki.pem import certificate_pem, private_key_pem
from opsmgr.pki.profiles import SERVER_AUTH
from tests.unit.pki.forge import AGENT_FQDN, GATEWAY_FQDN, GROUP, Forged, approved, forge_leaf

SERVICE = "opsmgr.test.AgentChannel"
SERVER_NAMES = ManagementServerNames(group=GROUP, namespace="opsmgr", statefulset="ms", headless_service="ms-hl",
                                     shared_service="ms-agents", replica=0)
TARGET_NAME = "ms-agents.opsmgr.svc"
IDENTITY_HEADER = "opsmgr-identity"
# Never route 127.0.0.1 through a proxy a developer's environment may set.
NO_PROXY = ("grpc.enable_http_proxy", 0)


@dataclass
class ChannelState:
    """What the test server knows: its revocation set, and every identity it let open a stream."""

    revocations: RevocationSet = field(default_factory=RevocationSet)
    accepted: list[Identity] = field(default_factory=list)
    streams_opened: int = 0


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    server: Forged

    def issue(self, identity: Identity, now: datetime | None = None) -> Forged:
        issued = issue_with_new_key(self.ca, approved(identity), now or datetime.now(UTC))
        return Forged(issued.key, issued.certificate)


@pytest.fixture(scope="module")
def pki() -> Pki:
    now = datetime.now(UTC)
    ca = create_ca(GROUP, now)
    server = issue_with_new_key(ca, approved(SERVER_NAMES.identity()), now, dns_names=SERVER_NAMES.dns_names())
    return Pki(ca, create_ca("fabrikam", now), Forged(server.key, server.certificate))


def _handler(role: Role, state: ChannelState) -> grpc.RpcMethodHandler:
    async def connect(requests: AsyncIterator[bytes], context: aio.ServicerContext) -> AsyncIterator[bytes]:
        state.streams_opened += 1
        claimed = dict(context.invocation_metadata() or ()).get(IDENTITY_HEADER)
        try:
            identity = authorize_peer(peer_certificate(context.auth_context()), group=GROUP, role=role,
                                      revocations=state.revocations, now=datetime.now(UTC), name=claimed)
        except CertificateError as refused:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(refused))
        state.accepted.append(identity)
        async for _hello in requests:
            yield f"welcome {identity.role.value} {identity.name}".encode()
            return

    return grpc.stream_stream_rpc_method_handler(connect)


@asynccontextmanager
async def _listening(listener: Forged, trust: bytes, state: ChannelState) -> AsyncIterator[int]:
    """A gRPC server on a free port of 127.0.0.1 that requires client certificates from `trust`."""
    grpc_server = aio.server(options=[NO_PROXY])
    grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        SERVICE, {"Connect": _handler(Role.AGENT, state), "ConnectGateway": _handler(Role.GATEWAY, state)})])
    credentials = grpc.ssl_server_credentials([(private_key_pem(listener.key), certificate_pem(listener.certificate))],
                                              root_certificates=trust, require_client_auth=True)
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    await grpc_server.start()
    try:
        yield port
    finally:
        await grpc_server.stop(grace=None)


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[tuple[int, ChannelState]]:
    state = ChannelState()
    async with _listening(pki.server, pki.ca.certificate_pem(), state) as port:
        yield port, state


async def _hello(port: int, client: Forged, *, trust: bytes, method: str = "Connect", claim: str | None = None,
                 target: str = TARGET_NAME) -> bytes:
    credentials = grpc.ssl_channel_credentials(root_certificates=trust, private_key=private_key_pem(client.key),
                                               certificate_chain=certificate_pem(client.certificate))
    options = [("grpc.ssl_target_name_override", target), NO_PROXY]
    async with aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        call = channel.stream_stream(f"/{SERVICE}/{method}")(
            timeout=10, metadata=[(IDENTITY_HEADER, claim)] if claim else None)
        await call.write(b"hello")
        reply = await call.read()
        await call.done_writing()
        assert isinstance(reply, bytes), f"stream ended without a reply: {await call.code()}"
        return reply


async def _refused_at_handshake(port: int, state: ChannelState, client: Forged, trust: bytes) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await _hello(port, client, trust=trust)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE, raised.value.details()
    assert state.streams_opened == 0, "TLS should have refused this before any stream opened"


async def _refused_at_stream_open(port: int, state: ChannelState, client: Forged, trust: bytes, *,
                                  method: str = "Connect", claim: str | None = None) -> str:
    with pytest.raises(aio.AioRpcError) as raised:
        await _hello(port, client, trust=trust, method=method, claim=claim)
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED, raised.value.details()
    assert state.streams_opened == 1 and state.accepted == []
    return str(raised.value.details())


def _agent(pki: Pki) -> Forged:
    return pki.issue(Identity.of(GROUP, Role.AGENT, AGENT_FQDN))


async def test_agent_certificate_from_the_group_ca_opens_a_stream(pki: Pki,
                                                                 server: tuple[int, ChannelState]) -> None:
    port, state = server
    reply = await _hello(port, _agent(pki), trust=pki.ca.certificate_pem(), claim=AGENT_FQDN)
    assert reply == f"welcome agent {AGENT_FQDN}".encode()
    assert state.accepted == [Identity.of(GROUP, Role.AGENT, AGENT_FQDN)]


async def test_gateway_certificate_opens_a_gateway_stream(pki: Pki, server: tuple[int, ChannelState]) -> None:
    port, _state = server
    gateway = pki.issue(Identity.of(GROUP, Role.GATEWAY, GATEWAY_FQDN))
    reply = await _hello(port, gateway, trust=pki.ca.certificate_pem(), method="ConnectGateway")
    assert reply == f"welcome gateway {GATEWAY_FQDN}".encode()


async def test_certificate_from_another_ca_is_refused_at_the_handshake(pki: Pki,
                                                                       server: tuple[int, ChannelState]) -> None:
    port, state = server
    stranger = issue_with_new_key(pki.other_ca, approved(Identity.of("fabrikam", Role.AGENT, AGENT_FQDN)),
                                  datetime.now(UTC))
    await _refused_at_handshake(port, state, Forged(stranger.key, stranger.certificate), pki.ca.certificate_pem())


async def test_expired_certificate_is_refused_at_the_handshake(pki: Pki, server: tuple[int, ChannelState]) -> None:
    port, state = server
    now = datetime.now(UTC)
    expired = forge_leaf(pki.ca, AGENT_FQDN, uris=[Identity.of(GROUP, Role.AGENT, AGENT_FQDN).uri],
                         not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    await _refused_at_handshake(port, state, expired, pki.ca.certificate_pem())


async def test_certificate_without_client_auth_is_refused_at_the_handshake(
        pki: Pki, server: tuple[int, ChannelState]) -> None:
    port, state = server
    server_only = forge_leaf(pki.ca, AGENT_FQDN, now=datetime.now(UTC), ekus=[SERVER_AUTH],
                             uris=[Identity.of(GROUP, Role.AGENT, AGENT_FQDN).uri])
    await _refused_at_handshake(port, state, server_only, pki.ca.certificate_pem())


async def test_agent_certificate_cannot_act_as_gateway(pki: Pki, server: tuple[int, ChannelState]) -> None:
    port, state = server
    details = await _refused_at_stream_open(port, state, _agent(pki), pki.ca.certificate_pem(),
                                            method="ConnectGateway")
    assert "is an agent certificate, not a gateway certificate" in details


async def test_revoked_agent_is_refused_at_stream_open(pki: Pki, server: tuple[int, ChannelState]) -> None:
    port, state = server
    agent = _agent(pki)
    state.revocations = state.revocations.revoke(agent.certificate, RevocationReason.KEY_COMPROMISE,
                                                 datetime.now(UTC))
    details = await _refused_at_stream_open(port, state, agent, pki.ca.certificate_pem())
    assert "revoked (keyCompromise)" in details


async def test_agent_claiming_another_identity_is_refused_at_stream_open(
        pki: Pki, server: tuple[int, ChannelState]) -> None:
    port, state = server
    details = await _refused_at_stream_open(port, state, _agent(pki), pki.ca.certificate_pem(),
                                            claim="db01.contoso.test")
    assert "is not 'db01.contoso.test'" in details


@pytest.mark.parametrize(("role", "name", "served"), [(Role.GATEWAY, GATEWAY_FQDN, True),
                                                      (Role.AGENT, AGENT_FQDN, False)])
async def test_only_a_certificate_with_server_auth_can_serve_agents(pki: Pki, role: Role, name: str,
                                                                    served: bool) -> None:
    state = ChannelState()
    async with _listening(pki.issue(Identity.of(GROUP, role, name)), pki.ca.certificate_pem(), state) as port:
        # The agent dials the listener's own name, so only the listener's EKUs decide.
        hello = _hello(port, _agent(pki), trust=pki.ca.certificate_pem(), target=name)
        if served:
            assert await hello == f"welcome agent {AGENT_FQDN}".encode()
        else:
            with pytest.raises(aio.AioRpcError) as raised:
                await hello
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            assert state.streams_opened == 0
