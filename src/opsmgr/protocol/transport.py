"""The gRPC side of the agent channel's listeners (management server and gateway): client certificates required,
message limits with room for a reasoned refusal, and keepalive that notices dead peers."""

from __future__ import annotations

import grpc

from opsmgr.protocol.limits import MAX_MESSAGE_BYTES

SERVICE = "opsmgr.agentchannel.v1.AgentChannel"
METHOD = f"/{SERVICE}/Connect"

# Room above our own limit, so a message a little too large reaches the session and is refused with a reason.
GRPC_RECEIVE_LIMIT = 2 * MAX_MESSAGE_BYTES


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
    ]
