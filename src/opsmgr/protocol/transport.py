"""The gRPC side of the agent channel's listeners (management server and gateway): client certificates required,
message limits with room for a reasoned refusal, and keepalive that notices dead peers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc import aio

from opsmgr.protocol.limits import MAX_MESSAGE_BYTES

SERVICE = "opsmgr.agentchannel.v1.AgentChannel"
METHOD = f"/{SERVICE}/Connect"

# Room above our own limit, so a message a little too large reaches the session and is refused with a reason.
GRPC_RECEIVE_LIMIT = 2 * MAX_MESSAGE_BYTES
# The largest TLS record a listener writes. gRPC's TLS frame protector keeps a buffer of this size for each
# connection while it is open (16 KiB by default). A server holds 10,000 mostly idle agent connections and writes
# little to them (acks, Welcomes, config updates): 2 KiB records cut about 7 KB of server RSS per connected agent
# (measured 117 -> 110 KB; 4 KiB cut 5 KB, 1 KiB no more than 2 KiB). Only what the listener writes is cut into
# these records; what it reads comes in the records the peer chose, so ingest is untouched. gRPC clamps the value
# to 1 KiB..16 KiB.
TLS_RECORD_BYTES = 2048


def server_credentials(key_pem: bytes, certificate_pem: bytes, ca_bundle_pem: bytes) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key_pem, certificate_pem)], root_certificates=ca_bundle_pem,
                                       require_client_auth=True)


def grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", GRPC_RECEIVE_LIMIT),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Dead agents (a pulled cable, a frozen VM) are noticed by keepalive, not by the next write.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.tsi.max_frame_size", TLS_RECORD_BYTES),
    ]


async def open_listener(handler: grpc.GenericRpcHandler, *, address: str, port: int, key: Path, certificate: Path,
                        ca_bundle: Path) -> tuple[aio.Server, int]:
    """A started gRPC listener requiring client certificates from `ca_bundle`, and the port it bound."""
    server = aio.server(options=grpc_options())
    server.add_generic_rpc_handlers([handler])
    credentials = server_credentials(*await asyncio.to_thread(
        lambda: (key.read_bytes(), certificate.read_bytes(), ca_bundle.read_bytes())))
    bound = server.add_secure_port(f"{address}:{port}", credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {address}:{port} (listen.port): is it in use?")
    await server.start()
    return server, bound
