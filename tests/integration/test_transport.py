"""The listeners' gRPC options (`opsmgr.protocol.transport`) over real mTLS on 127.0.0.1.

The listener writes small TLS records to keep each connection's buffers small; messages up to the channel's limit
must still cross whole, both ways: a large batch from the agent, a large Welcome or ConfigUpdate from the server.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc import aio

from opsmgr.pki import Identity, Role, create_ca, issue_with_new_key
from opsmgr.pki.pem import certificate_pem, private_key_pem
from opsmgr.protocol.limits import MAX_MESSAGE_BYTES
from opsmgr.protocol.transport import TLS_RECORD_BYTES, open_listener
from tests.integration.test_pki_tls import NO_PROXY, SERVER_NAMES, TARGET_NAME
from tests.unit.pki.forge import AGENT_FQDN, GROUP, approved

SERVICE = "opsmgr.test.Transport"
LARGE = MAX_MESSAGE_BYTES - 1024  # room for gRPC's own framing under the send limit


def _payload(size: int, seed: bytes) -> bytes:
    """Bytes that differ everywhere, so a lost, repeated or reordered record shows."""
    blocks = (hashlib.sha256(seed + index.to_bytes(4, "big")).digest() for index in range(size // 32 + 1))
    return b"".join(blocks)[:size]


async def _echo_digest_and_large_reply(requests: AsyncIterator[bytes],
                                       _context: aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    async for request in requests:
        yield hashlib.sha256(request).digest() + _payload(LARGE, request[:32])


async def test_messages_far_larger_than_a_tls_record_cross_whole_both_ways(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = create_ca(GROUP, now)
    server = issue_with_new_key(ca, approved(SERVER_NAMES.identity()), now, dns_names=SERVER_NAMES.dns_names())
    agent = issue_with_new_key(ca, approved(Identity.of(GROUP, Role.AGENT, AGENT_FQDN)), now)
    (tmp_path / "tls.key").write_bytes(server.key_pem())
    (tmp_path / "tls.crt").write_bytes(server.certificate_pem())
    (tmp_path / "ca.crt").write_bytes(ca.certificate_pem())
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.stream_stream_rpc_method_handler(_echo_digest_and_large_reply)})
    listener, port = await open_listener(handler, address="127.0.0.1", port=0, key=tmp_path / "tls.key",
                                         certificate=tmp_path / "tls.crt", ca_bundle=tmp_path / "ca.crt")
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.certificate_pem(),
                                               private_key=private_key_pem(agent.key),
                                               certificate_chain=certificate_pem(agent.certificate))
    options = [("grpc.ssl_target_name_override", TARGET_NAME), NO_PROXY,
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    try:
        async with aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
            call = channel.stream_stream(f"/{SERVICE}/Echo")(timeout=60)
            for seed, size in ((b"batch", LARGE), (b"small", 10), (b"odd", 3 * TLS_RECORD_BYTES + 7)):
                sent = _payload(size, seed)
                await call.write(sent)
                reply = await call.read()
                assert isinstance(reply, bytes), f"the stream ended: {await call.code()}"
                assert reply[:32] == hashlib.sha256(sent).digest(), f"the server read {seed!r} altered"
                assert reply[32:] == _payload(LARGE, sent[:32]), f"the agent read the reply to {seed!r} altered"
            await call.done_writing()
            assert await call.code() is grpc.StatusCode.OK
    finally:
        await listener.stop(grace=None)
