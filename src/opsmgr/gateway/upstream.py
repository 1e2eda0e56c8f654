"""The gateway's connection to its management servers: one mutually authenticated HTTP/2 connection to the current
server, which every relayed agent stream rides on, chosen by the agents' rules (`opsmgr.protocol.server_choice`):
3 attempts on the primary with backoff and jitter, then the failovers in order, and while on a failover a probe of
the primary every `failback_seconds` that fails back as soon as it answers.

Leaving a server that still answers (failback, stop) is planned: the relays on it are asked to say Goodbye and let
their acks drain first. Losing a server is not: its relays end with UNAVAILABLE and their agents replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from opsmgr.protocol.limits import MAX_MESSAGE_BYTES
from opsmgr.protocol.server_choice import BackoffPolicy, ServerChoice
from opsmgr.protocol.transport import GRPC_RECEIVE_LIMIT

log = logging.getLogger(__name__)

# What to do with the relays on a server the gateway leaves: planned (Goodbye first) or not.
Departure = Callable[[str, bool], Awaitable[None]]


@dataclass(frozen=True)
class UpstreamSettings:
    servers: tuple[str, ...]
    certificate: Path
    key: Path
    ca_bundle: Path
    tls_server_name: str | None = None
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    primary_attempts: int = 3
    failback_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class Upstream:
    """The server relays open streams on now, and the channel to it."""

    server: str
    channel: aio.Channel


@dataclass(frozen=True)
class _Lost:
    reason: str


@dataclass(frozen=True)
class _Leave:
    reason: str  # failback or stop: the server still answers


class UpstreamConnection:
    def __init__(self, settings: UpstreamSettings, *, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.choice = ServerChoice(settings.servers[0], settings.servers[1:],
                                   primary_attempts=settings.primary_attempts)
        self.current: Upstream | None = None
        self.last_error: str | None = None
        self.connects = 0
        self._rng = rng
        self._departure: Departure | None = None
        self._listeners: list[Callable[[Upstream | None], None]] = []

    def on_departure(self, departure: Departure) -> None:
        """`departure(server, planned)` is awaited whenever the gateway leaves a server, before its channel closes."""
        self._departure = departure

    def on_change(self, listener: Callable[[Upstream | None], None]) -> None:
        self._listeners.append(listener)

    def _set(self, upstream: Upstream | None) -> None:
        self.current = upstream
        for listener in self._listeners:
            listener(upstream)

    async def _credentials(self) -> grpc.ChannelCredentials:
        # Read on every connect, so a renewed certificate in the mounted Secret is used without a restart.
        key, certificate, trust = await asyncio.to_thread(
            lambda: (self.settings.key.read_bytes(), self.settings.certificate.read_bytes(),
                     self.settings.ca_bundle.read_bytes()))
        return grpc.ssl_channel_credentials(root_certificates=trust, private_key=key, certificate_chain=certificate)

    def _options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.enable_http_proxy", 0),  # servers are dialled directly
            # An agent's oversized batch must reach the server, which refuses it with a reason the agent can act on.
            ("grpc.max_send_message_length", GRPC_RECEIVE_LIMIT),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if self.settings.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.settings.tls_server_name))
        return options

    async def open_channel(self, server: str) -> aio.Channel | None:
        """A channel to `server` once its TLS handshake completed, or None after connect_timeout_seconds."""
        channel = aio.secure_channel(server, await self._credentials(), options=self._options())
        try:
            async with asyncio.timeout(self.settings.connect_timeout_seconds):
                await channel.channel_ready()
        except (TimeoutError, aio.AioRpcError):
            await channel.close(grace=None)
            return None
        return channel

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a connection to the right server until `stop`; relays on a server being left get to say Goodbye."""
        while not await _stopped_within(stop, await self._attempt(stop)):
            pass

    async def _attempt(self, stop: asyncio.Event) -> float:
        """Connect to the current choice and hold the connection while it lasts; returns the wait before the next."""
        server = self.choice.current
        channel = await self.open_channel(server)
        if channel is None:
            self.last_error = f"{server}: no TLS connection within {self.settings.connect_timeout_seconds:g} s"
            return self._failed(server, "could not connect to", self.last_error)
        self.connects += 1
        self.choice = self.choice.connected()
        log.info("connected to management server %s%s", server, "" if self.choice.on_primary else " (failover)")
        self._set(Upstream(server, channel))
        outcome = await self._hold(channel, stop)
        self._set(None)
        try:
            if self._departure is not None:
                await self._departure(server, isinstance(outcome, _Leave))
        finally:
            await channel.close(grace=None)
        if isinstance(outcome, _Lost):
            self.last_error = f"{server}: {outcome.reason}"
            return self._failed(server, "lost the connection to", outcome.reason)
        if not stop.is_set():
            log.info("primary %s answers again: failing back from %s", self.choice.primary, server)
            self.choice = self.choice.fail_back()
        return 0.0

    def _failed(self, server: str, what: str, reason: str) -> float:
        self.choice, attempt = self.choice.failed(self.settings.backoff, self._rng())
        log.warning("%s management server %s: %s; next attempt on %s in %.1f s", what, server, reason,
                    attempt.server, attempt.delay_seconds)
        return attempt.delay_seconds

    async def _hold(self, channel: aio.Channel, stop: asyncio.Event) -> _Lost | _Leave:
        watchers: set[asyncio.Task[_Lost | _Leave]] = {
            asyncio.create_task(self._until_lost(channel)), asyncio.create_task(self._until_failback()),
            asyncio.create_task(self._until_stopped(stop))}
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _until_stopped(self, stop: asyncio.Event) -> _Leave:
        await stop.wait()
        return _Leave("gateway stopping")

    async def _until_lost(self, channel: aio.Channel) -> _Lost:
        """Returns once the connection broke and does not come back within connect_timeout_seconds."""
        while True:
            state = channel.get_state(try_to_connect=True)
            if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                return _Lost(f"connection {state.name.lower()}")
            if state is grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(state)
                continue
            try:
                # IDLE or CONNECTING after a disconnect: a server that restarts at once is not a failure.
                async with asyncio.timeout(self.settings.connect_timeout_seconds):
                    await channel.channel_ready()
            except (TimeoutError, aio.AioRpcError):
                return _Lost(f"no reconnection within {self.settings.connect_timeout_seconds:g} s")

    async def _until_failback(self) -> _Leave:
        if self.choice.on_primary:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.settings.failback_seconds)
            probe = await self.open_channel(self.choice.primary)
            if probe is not None:
                await probe.close(grace=None)
                return _Leave(f"failing back to the primary {self.choice.primary}")


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
    return stop.is_set()
