"""One agent's stream through the gateway, spliced to one stream of the gateway's own to a management server.

The gateway holds nothing: each message read from one side is written to the other before the next is read, so
gRPC's flow control reaches from the server's paced reads back to the agent, and every Ack the agent gets is the
server's own, sent after its database committed. Whatever is in flight when a stream breaks is still in the
agent's queue, which replays it; the server's batch ids make the replay harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from opsmgr.gateway.metrics import GatewayMetrics
from opsmgr.gateway.relay_policy import EndRelay, Refusal, agent_message_kind, relayed_hello, toward_agent
from opsmgr.gateway.upstream import Upstream
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.transport import METHOD

log = logging.getLogger(__name__)

HELLO_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class RelaySettings:
    welcome_timeout_seconds: float = 15.0
    goodbye_flush_seconds: float = 5.0


@dataclass(frozen=True)
class RelayEnd:
    """How the agent's stream ends: OK, or a gRPC status with the reason the agent logs."""

    code: grpc.StatusCode
    details: str


class AgentRelay:
    def __init__(self, context: aio.ServicerContext[bytes, bytes], agent: str, serial: int, peer: str, *,
                 settings: RelaySettings, metrics: GatewayMetrics) -> None:
        self.context = context
        self.agent = agent
        self.serial = serial
        self.peer = peer
        self.settings = settings
        self.metrics = metrics
        self.server: str | None = None
        self._call: Any = None
        self._write_lock = asyncio.Lock()
        self._leaving: str | None = None
        self._ended: asyncio.Future[RelayEnd] = asyncio.get_running_loop().create_future()
        self._finished = asyncio.Event()

    def end(self, code: grpc.StatusCode, details: str) -> None:
        """End the stream now (revocation, a lost server); safe to call twice."""
        if not self._ended.done():
            self._ended.set_result(RelayEnd(code, details))

    async def leave(self, reason: str) -> None:
        """A planned move off this stream's server: Goodbye upstream, let the acks drain, then end the agent's
        stream so it reconnects; batches the agent sent meanwhile are not forwarded and stay in its queue."""
        if self._call is None or self._ended.done():
            self.end(grpc.StatusCode.UNAVAILABLE, f"the gateway is {reason}: reconnect")
            return
        async with self._write_lock:
            if self._leaving is not None:
                return
            self._leaving = reason
            with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.write(pb.AgentMessage(goodbye=pb.Goodbye(reason=f"gateway {reason}"))
                                       .SerializeToString())
                await self._call.done_writing()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.goodbye_flush_seconds):
                await self._finished.wait()
        self.end(grpc.StatusCode.UNAVAILABLE, f"the gateway is {reason}: reconnect")

    async def run(self, upstream: Upstream | None) -> RelayEnd | None:
        """Relay until either side ends; returns how the agent's stream must end (None: OK)."""
        try:
            return await self._run(upstream)
        finally:
            self._finished.set()

    async def _run(self, upstream: Upstream | None) -> RelayEnd | None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_SECONDS):
                hello = await self.context.read()
        except TimeoutError:
            return self._refused(Refusal("NoHello", f"no Hello within {HELLO_TIMEOUT_SECONDS:.0f} s"),
                                 grpc.StatusCode.DEADLINE_EXCEEDED)
        if hello is aio.EOF:
            return None
        assert isinstance(hello, bytes)
        relayed = relayed_hello(hello, self.agent)
        if isinstance(relayed, Refusal):
            return self._refused(relayed, grpc.StatusCode.PERMISSION_DENIED)
        if upstream is None:
            self.metrics.refusals.labels("NoServer").inc()
            return RelayEnd(grpc.StatusCode.UNAVAILABLE, "the gateway reaches no management server now: retry later")
        self.server = upstream.server
        self._call = upstream.channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)()
        try:
            return await self._splice(relayed)
        finally:
            self._call.cancel()  # no-op after a clean end; tells the server a vanished agent is gone

    def _refused(self, refusal: Refusal, code: grpc.StatusCode) -> RelayEnd:
        self.metrics.refusals.labels(refusal.reason).inc()
        log.warning("agent stream refused: peer=%s agent=%s reason=%s: %s", self.peer, self.agent, refusal.reason,
                    refusal.message)
        return RelayEnd(code, refusal.message)

    async def _splice(self, hello: bytes) -> RelayEnd | None:
        try:
            await self._call.write(hello)
            async with asyncio.timeout(self.settings.welcome_timeout_seconds):
                first = await self._call.read()
        except TimeoutError:
            return RelayEnd(grpc.StatusCode.UNAVAILABLE, f"management server {self.server} sent no Welcome within "
                                                         f"{self.settings.welcome_timeout_seconds:g} s")
        except aio.AioRpcError as exc:
            return self._upstream_end(exc.code(), exc.details() or "")
        if first is aio.EOF:
            return self._upstream_end(await self._call.code(), await self._call.details())
        ended = await self._to_agent(first)
        if ended is not None:
            return ended
        log.info("relaying agent %s (peer %s) to management server %s", self.agent, self.peer, self.server)
        self.metrics.relayed_agents.inc()
        pumps = {asyncio.create_task(self._agent_to_server()), asyncio.create_task(self._server_to_agent())}
        waiting: set[asyncio.Future[Any]] = {*pumps, self._ended}
        try:
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    waiting.discard(finished)
                    result = finished.result()
                    if finished is self._ended or result is not None:
                        return self._ending(result)
        finally:
            self.metrics.relayed_agents.dec()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    def _ending(self, end: RelayEnd) -> RelayEnd | None:
        if self._leaving is not None:
            return RelayEnd(grpc.StatusCode.UNAVAILABLE, f"the gateway is {self._leaving}: reconnect")
        return None if end.code is grpc.StatusCode.OK else end

    def _upstream_end(self, code: grpc.StatusCode, details: str) -> RelayEnd:
        if code is not grpc.StatusCode.OK:
            log.warning("management server %s ended agent %s's stream: %s: %s", self.server, self.agent, code.name,
                        details)
        return RelayEnd(code, f"management server {self.server}: {details}" if details else "")

    async def _to_agent(self, raw: bytes) -> RelayEnd | None:
        passed = toward_agent(raw)
        if isinstance(passed, EndRelay):
            log.warning("agent %s: %s", self.agent, passed.reason)
            return RelayEnd(grpc.StatusCode.UNAVAILABLE, f"{passed.reason}: reconnect to the gateway")
        await self.context.write(passed)
        self.metrics.messages.labels("to_agent").inc()
        return None

    async def _agent_to_server(self) -> None:
        """Returns when the agent finished writing (half-close); the stream then ends when the server ends it."""
        while True:
            raw = await self.context.read()
            async with self._write_lock:
                if self._leaving is not None:
                    continue  # the agent keeps it queued and sends it again on its next stream
                try:
                    if raw is aio.EOF:
                        await self._call.done_writing()
                        return
                    assert isinstance(raw, bytes)
                    await self._call.write(raw)
                except (aio.AioRpcError, asyncio.InvalidStateError):
                    return  # the server's side ended: the reading pump reports how
            self.metrics.messages.labels(agent_message_kind(raw)).inc()

    async def _server_to_agent(self) -> RelayEnd:
        while True:
            try:
                raw = await self._call.read()
            except aio.AioRpcError as exc:
                return self._upstream_end(exc.code(), exc.details() or "")
            if raw is aio.EOF:
                return self._upstream_end(await self._call.code(), await self._call.details())
            ended = await self._to_agent(raw)
            if ended is not None:
                return ended
