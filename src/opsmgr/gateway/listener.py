"""The gateway's side of TCP 5723: each agent's certificate is authorized before any message is read, then its
stream runs as an `AgentRelay`. Live relays are indexed by certificate serial (a revocation ends exactly the streams
it concerns) and by server (leaving a server ends exactly the relays on it)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from grpc import aio

from opsmgr.gateway.metrics import GatewayMetrics
from opsmgr.gateway.relay import AgentRelay, RelaySettings
from opsmgr.gateway.upstream import UpstreamConnection
from opsmgr.pki import CertificateError, Role, authorize_peer, peer_certificate
from opsmgr.pki.revocation_watch import RevocationWatch
from opsmgr.protocol.transport import SERVICE

log = logging.getLogger(__name__)


class GatewayListener:
    def __init__(self, *, group: str, upstream: UpstreamConnection, revocations: RevocationWatch,
                 settings: RelaySettings, metrics: GatewayMetrics) -> None:
        self.group = group
        self.upstream = upstream
        self.revocations = revocations
        self.settings = settings
        self.metrics = metrics
        self.by_serial: dict[int, set[AgentRelay]] = defaultdict(set)
        revocations.on_revoked(self.close_revoked)
        upstream.on_departure(self.depart)

    def handler(self) -> grpc.GenericRpcHandler:
        # Raw bytes both ways: batches pass through without being parsed and encoded again.
        method = grpc.stream_stream_rpc_method_handler(self.connect, request_deserializer=None,
                                                       response_serializer=None)
        return grpc.method_handlers_generic_handler(SERVICE, {"Connect": method})

    def relays(self) -> list[AgentRelay]:
        return [relay for relays in self.by_serial.values() for relay in relays]

    async def connect(self, _requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]) -> None:
        peer = context.peer()
        try:
            certificate = peer_certificate(context.auth_context())
            identity = authorize_peer(certificate, group=self.group, role=Role.AGENT,
                                      revocations=self.revocations.current, now=datetime.now(UTC))
        except CertificateError as refused:
            self.metrics.refusals.labels(refused.reason).inc()
            log.warning("agent stream refused: peer=%s reason=%s: %s", peer, refused.reason, refused)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(refused))
        relay = AgentRelay(context, identity.name, certificate.serial_number, peer, settings=self.settings,
                           metrics=self.metrics)
        self.by_serial[relay.serial].add(relay)
        try:
            end = await relay.run(self.upstream.current)
        finally:
            self._forget(relay)
        if end is not None:
            await context.abort(end.code, end.details)

    def _forget(self, relay: AgentRelay) -> None:
        relays = self.by_serial.get(relay.serial)
        if relays is not None:
            relays.discard(relay)
            if not relays:
                del self.by_serial[relay.serial]

    def close_revoked(self, serials: frozenset[int]) -> None:
        for serial in serials:
            for relay in list(self.by_serial.get(serial, ())):
                relay.end(grpc.StatusCode.PERMISSION_DENIED,
                          f"certificate serial {serial:x} was revoked while the stream was open")

    async def depart(self, server: str, planned: bool) -> None:
        """The gateway leaves `server`: planned, its relays say Goodbye first; lost, they end now."""
        leaving = [relay for relay in self.relays() if relay.server == server]
        if not leaving:
            return
        if planned:
            log.info("moving %d agent stream(s) off management server %s", len(leaving), server)
            await asyncio.gather(*(relay.leave(f"leaving management server {server}") for relay in leaving))
            return
        for relay in leaving:
            relay.end(grpc.StatusCode.UNAVAILABLE, f"the gateway lost management server {server}: reconnect")
