"""The agent's stream to its management server: mutual TLS, Hello/Welcome, batches from the durable queue with
their per-database acks, heartbeats, certificate renewal, trust updates, Redirect, failover and failback.

One `ServerConnection` runs for the agent's life; each stream it opens is a `_Stream`. Only the stream's writer
task writes, so heartbeats and control messages are sent between batches, ahead of any backlog, and a bounded
window of unacknowledged batches keeps the server reading (it paces its reads by its own in-flight limit).
A heartbeat never waits for the queue's thread: it carries the queue status last read, and the writer sends it
while the thread seals the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from grpc import aio

from opsmgr import __version__
from opsmgr.agent.identity import AgentIdentity, IdentityError, IdentityFiles
from opsmgr.agent.lanes import Lane
from opsmgr.agent.queue import DiskQueue
from opsmgr.agent.queue_policy import BatchFate, SendWindow, lane_to_send
from opsmgr.agent.server_choice import BackoffPolicy, ServerChoice
from opsmgr.pki.schedule import RenewalAction, decision_by_validity
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.limits import MAX_BATCH_ITEMS, MAX_MESSAGE_BYTES
from opsmgr.protocol.versions import MAX_VERSION, MIN_VERSION

log = logging.getLogger(__name__)

METHOD = "/opsmgr.agentchannel.v1.AgentChannel/Connect"
DEFAULT_HEARTBEAT_SECONDS = 60.0  # Operations Manager's default, used when Welcome names none
DEFAULT_DEFERRED_RETRY_SECONDS = 5.0

_T = TypeVar("_T")
TaskHandler = Callable[[pb.TaskRequest], Awaitable[pb.TaskResult]]
ConfigListener = Callable[[pb.AgentConfig], None]


@dataclass(frozen=True)
class ConnectionSettings:
    primary: str
    failovers: tuple[str, ...] = ()
    tls_server_name: str | None = None  # the name the servers' certificates carry, when dialled by address
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    primary_attempts: int = 3
    failback_seconds: float = 60.0
    probe_timeout_seconds: float = 5.0
    welcome_timeout_seconds: float = 15.0
    heartbeat_seconds: float | None = None  # None: the interval the server's Welcome names
    window: SendWindow = field(default_factory=SendWindow)
    bulk_linger_seconds: float = 1.0
    idle_poll_seconds: float = 1.0  # re-check the queue for items another local process enqueued
    goodbye_flush_seconds: float = 5.0
    renew: bool = True
    renewal_check_seconds: float = 3600.0
    renew_before: timedelta | None = None  # None: at 2/3 of the certificate's lifetime


@dataclass(frozen=True)
class AgentFacts:
    """What Hello says about the agent, besides its queue."""

    fqdn: str
    placement: str = "host"
    agent_version: str = __version__


# ------------------------------------------------------------------ how a stream ends


@dataclass(frozen=True)
class _Stopped:
    pass


@dataclass(frozen=True)
class _Redirected:
    server: str
    failovers: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class _FailBack:
    pass


@dataclass(frozen=True)
class _Failed:
    reason: str
    welcomed: bool


_Outcome = _Stopped | _Redirected | _FailBack | _Failed


@dataclass
class ConnectionState:
    """What the agent knows about its connection, for logs, the health of the agent and tests."""

    server: str | None = None
    connected: bool = False
    streams_opened: int = 0
    heartbeats_sent: int = 0
    batches_sent: int = 0
    last_error: str | None = None
    renewals: int = 0
    trust_updates: int = 0
    rejected_batches: int = 0
    servers_welcomed: list[str] = field(default_factory=list)


def channel_credentials(identity: AgentIdentity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=identity.trust_pem, private_key=identity.key_pem,
                                        certificate_chain=identity.chain_pem)


def _encode(message: pb.AgentMessage | bytes) -> bytes:
    # Sealed batches are stored as their wire bytes: sending them must not parse and re-encode thousands of items.
    return message if isinstance(message, bytes) else message.SerializeToString()


class CertificateRenewer:
    """Asks for a new certificate over the stream when renewal is due, and installs what comes back."""

    def __init__(self, store: IdentityFiles, fqdn: str, renew_before: timedelta | None) -> None:
        self._store = store
        self._fqdn = fqdn
        self._renew_before = renew_before
        self._pending: bytes | None = None  # the new key's PEM while its request waits for the Renewal
        self._warned_expired = False

    def reset(self) -> None:
        """A renewal is answered on the stream that asked; a new stream asks again."""
        self._pending = None

    async def request_if_due(self, identity: AgentIdentity, now: datetime) -> pb.AgentMessage | None:
        decision = decision_by_validity(identity.not_before, identity.not_after, now, renew_before=self._renew_before)
        if decision.action is RenewalAction.REISSUE and not self._warned_expired:
            self._warned_expired = True
            log.error("agent certificate %s: enroll the agent again, the stream cannot renew it", decision.reason)
        if decision.action is not RenewalAction.RENEW or self._pending is not None:
            return None
        try:
            request = await asyncio.to_thread(self._store.request_renewal, self._fqdn)
        except IdentityError as exc:
            log.error("certificate renewal not requested: %s; the next renewal check tries again", exc)
            return None
        self._pending = request.key_pem
        log.info("certificate renewal requested: %s", decision.reason)
        return pb.AgentMessage(renewal_request=pb.RenewalRequest(csr_pem=request.csr_pem))

    async def install(self, identity: AgentIdentity, renewal: pb.Renewal) -> bool:
        key = self._pending
        if key is None:
            log.warning("a Renewal arrived that this agent did not request on this stream: ignored")
            return False
        if renewal.refused_reason:
            self._pending = None  # asked again at the next check, with a new key
            log.error("certificate renewal refused by the server (%s): %s", renewal.refused_reason, renewal.message)
            return False
        try:
            await asyncio.to_thread(self._store.install_renewal, identity, key, renewal.certificate_pem,
                                    renewal.trust_bundle_pem)
        except IdentityError as exc:
            log.error("certificate renewal not installed: %s", exc)
            return False
        finally:
            self._pending = None
        log.info("certificate renewed; the next connection uses it")
        return True


class ServerConnection:
    """Keeps one stream open to the right management server for the agent's life; see the module docstring."""

    def __init__(self, settings: ConnectionSettings, facts: AgentFacts, queue: DiskQueue, identity: IdentityFiles, *,
                 task_handler: TaskHandler | None = None, config_listener: ConfigListener | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.facts = facts
        self.queue = queue
        self.identity = identity
        self.state = ConnectionState()
        self.choice = ServerChoice(settings.primary, settings.failovers, primary_attempts=settings.primary_attempts)
        self.renewer = CertificateRenewer(identity, facts.fqdn, settings.renew_before)
        self._task_handler = task_handler
        self._config_listener = config_listener
        self._rng = rng

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stream, reconnect, until `stop`; then say Goodbye on the live stream."""
        delay = 0.0
        while not stop.is_set():
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                if stop.is_set():
                    break
            server = self.choice.current
            outcome = await self._stream(server, stop)
            self.state.connected = False
            if isinstance(outcome, _Stopped):
                break
            if isinstance(outcome, _Redirected):
                log.info("redirected from %s to %s: %s", server, outcome.server, outcome.reason)
                self.choice = self.choice.redirected(outcome.server, outcome.failovers)
                delay = 0.0
            elif isinstance(outcome, _FailBack):
                log.info("primary %s answers again: failing back from %s", self.choice.primary, server)
                self.choice = self.choice.fail_back()
                delay = 0.0
            else:
                self.state.last_error = f"{server}: {outcome.reason}"
                self.choice, attempt = self.choice.failed(self.settings.backoff, self._rng())
                delay = attempt.delay_seconds
                log.warning("%s %s: %s; next attempt on %s in %.1f s",
                            "lost the stream to" if outcome.welcomed else "could not connect to", server,
                            outcome.reason, attempt.server, delay)

    def _options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.enable_http_proxy", 0),  # the agent dials its servers directly, never through an HTTP proxy
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if self.settings.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.settings.tls_server_name))
        return options

    async def _stream(self, server: str, stop: asyncio.Event) -> _Outcome:
        try:
            identity = await asyncio.to_thread(self.identity.load)
        except IdentityError as exc:
            return _Failed(str(exc), welcomed=False)
        self.state.server = server
        channel = aio.secure_channel(server, channel_credentials(identity), options=self._options())
        stream: _Stream | None = None
        try:
            call = channel.stream_stream(METHOD, request_serializer=_encode,
                                         response_deserializer=pb.ServerMessage.FromString)()
            try:
                async with asyncio.timeout(self.settings.welcome_timeout_seconds):
                    welcome = await self._hello(call)
            except TimeoutError:
                return _Failed(f"no Welcome within {self.settings.welcome_timeout_seconds:g} s", welcomed=False)
            if not isinstance(welcome, pb.Welcome):
                return welcome
            self.state.connected = True
            self.state.streams_opened += 1
            self.state.servers_welcomed.append(server)
            self.choice = self.choice.connected().with_failovers(tuple(welcome.config.failover_servers))
            if self._config_listener is not None and welcome.HasField("config"):
                self._config_listener(welcome.config)  # the packs of a fresh stream come in Welcome, not ConfigUpdate
            log.info("connected to %s (server %s, session %s, protocol %d)", server, welcome.server,
                     welcome.session_id, welcome.version)
            stream = _Stream(self, call, identity, welcome, stop)
            return await stream.run()
        except aio.AioRpcError as exc:
            return _Failed(f"{exc.code().name}: {exc.details()}", welcomed=stream is not None)
        except asyncio.InvalidStateError:
            # A write raced the call's end (the server is down or went away): the call's status says why.
            code, details = await call.code(), await call.details()
            return _Failed(f"{code.name}: {details}", welcomed=stream is not None)
        finally:
            self.renewer.reset()
            await channel.close(grace=None)

    async def _hello(self, call: Any) -> pb.Welcome | _Outcome:
        status = await self.queue.status()
        await call.write(pb.AgentMessage(hello=pb.Hello(
            min_version=MIN_VERSION, max_version=MAX_VERSION, agent=self.facts.fqdn,
            agent_version=self.facts.agent_version, epoch=self.queue.epoch, queue=status.to_wire(),
            placement=self.facts.placement)))
        first = await call.read()
        if first is aio.EOF:
            return _Failed(f"{(await call.code()).name}: {await call.details()}", welcomed=False)
        body = first.WhichOneof("body")
        if body == "welcome":
            welcome: pb.Welcome = first.welcome
            return welcome
        if body == "redirect":
            return _Redirected(first.redirect.server, tuple(first.redirect.failover_servers), first.redirect.reason)
        return _Failed(f"the server answered Hello with {body}, not Welcome", welcomed=False)

    async def probe(self, server: str) -> bool:
        """Whether `server` completes a TLS handshake with our certificate now (the failback test)."""
        try:
            identity = await asyncio.to_thread(self.identity.load)
        except IdentityError:
            return False
        channel = aio.secure_channel(server, channel_credentials(identity), options=self._options())
        try:
            async with asyncio.timeout(self.settings.probe_timeout_seconds):
                await channel.channel_ready()
            return True
        except (TimeoutError, aio.AioRpcError):
            return False
        finally:
            await channel.close(grace=None)


class _Stream:
    """One open stream: a writer, a reader and timers, until one of them says how the stream ends."""

    def __init__(self, owner: ServerConnection, call: Any, identity: AgentIdentity, welcome: pb.Welcome,
                 stop: asyncio.Event) -> None:
        self.owner = owner
        self.settings = owner.settings
        self.queue = owner.queue
        self.call = call
        self.identity = identity
        self.stop = stop
        self.control: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
        self.in_flight: dict[int, Lane] = {}
        self.deferred: dict[int, float] = {}  # seq -> monotonic time it may be sent again
        self.wake = asyncio.Event()
        self.leaving: str | None = None  # why this stream is being closed by us: Goodbye's reason
        self.goodbye_sent = asyncio.Event()
        self.drained = asyncio.Event()  # set when nothing is in flight any more
        self.heartbeat_seconds = self._heartbeat_seconds(welcome.config)
        self.max_items = min(welcome.limits.max_batch_items or MAX_BATCH_ITEMS, MAX_BATCH_ITEMS)
        self.max_bytes = min(welcome.limits.max_message_bytes or MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES)
        self.heartbeat_seq = 0
        self._background: set[asyncio.Task[None]] = set()

    def _heartbeat_seconds(self, config: pb.AgentConfig) -> float:
        if self.settings.heartbeat_seconds is not None:
            return self.settings.heartbeat_seconds
        return float(config.heartbeat_interval_seconds or DEFAULT_HEARTBEAT_SECONDS)

    def send(self, message: pb.AgentMessage) -> None:
        self.control.put_nowait(message)
        self.wake.set()

    async def run(self) -> _Outcome:
        unsubscribe = self.queue.on_change(self.wake.set)
        tasks = {asyncio.create_task(coroutine) for coroutine in (
            self._write_loop(), self._read_loop(), self._heartbeats(), self._renewals(), self._stop_watch(),
            self._failback_watch())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            unsubscribe()
            for task in tasks | self._background:
                task.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)

    # ------------------------------------------------------------------ writing

    async def _write_loop(self) -> _Outcome:
        while True:
            while not self.control.empty():
                await self.call.write(self.control.get_nowait())
            if self.leaving is not None:
                await self.call.write(pb.AgentMessage(goodbye=pb.Goodbye(reason=self.leaving)))
                await self.call.done_writing()
                self.goodbye_sent.set()
                await asyncio.Event().wait()  # the stop watcher ends the stream once acks are in
            self.wake.clear()
            retry_after = await self._send_next_batch()
            if retry_after == 0.0:
                continue
            if not self.control.empty() or self.leaving is not None:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(retry_after, self.settings.idle_poll_seconds)):
                    await self.wake.wait()

    async def _send_next_batch(self) -> float:
        """Send one batch if a lane has one and the window allows; else how long until one may be due."""
        now = time.monotonic()
        for seq in [seq for seq, ready in self.deferred.items() if ready <= now]:
            del self.deferred[seq]
        exclude = set(self.in_flight) | set(self.deferred)
        wait = min(self.deferred.values(), default=now + self.settings.idle_poll_seconds) - now
        counts = Counter(self.in_flight.values())
        for lane in (Lane.PRIORITY, Lane.BULK):
            if lane_to_send(self.settings.window, counts, {lane}) is not lane:
                continue
            next_batch = await self._writing_control_meanwhile(self.queue.next_batch(
                lane, exclude, max_items=self.max_items, max_message_bytes=self.max_bytes,
                linger_seconds=self.settings.bulk_linger_seconds))
            if next_batch.batch is not None:
                self.in_flight[next_batch.batch.seq] = lane
                await self.call.write(next_batch.batch.message)
                self.owner.state.batches_sent += 1
                return 0.0
            if next_batch.retry_after is not None:
                wait = min(wait, next_batch.retry_after)
        return max(wait, 0.01)

    async def _writing_control_meanwhile(self, read: Awaitable[_T]) -> _T:
        """Await a read on the queue's thread, writing the heartbeats and control messages that come meanwhile:
        sealing a 5,000-item batch, or the fsynced acks queued before it, takes the thread for a second or more."""
        reading = asyncio.ensure_future(read)
        try:
            while not reading.done():
                taking = asyncio.ensure_future(self.control.get())
                await asyncio.wait({reading, taking}, return_when=asyncio.FIRST_COMPLETED)
                if not taking.done():
                    taking.cancel()  # Queue.get gives up cleanly: a message put meanwhile stays queued
                    await asyncio.gather(taking, return_exceptions=True)
                if taking.done() and not taking.cancelled():
                    await self.call.write(taking.result())
            return reading.result()
        finally:
            reading.cancel()

    async def _heartbeats(self) -> _Outcome:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            status = self.queue.recent_status()
            self.heartbeat_seq += 1
            beat = pb.Heartbeat(seq=self.heartbeat_seq, queue=status.to_wire())
            beat.sent_at.FromDatetime(datetime.now(UTC))
            self.send(pb.AgentMessage(heartbeat=beat))
            self.owner.state.heartbeats_sent += 1

    async def _renewals(self) -> _Outcome:
        if not self.settings.renew:
            await asyncio.Event().wait()
        while True:
            request = await self.owner.renewer.request_if_due(self.identity, datetime.now(UTC))
            if request is not None:
                self.send(request)
            await asyncio.sleep(self.settings.renewal_check_seconds)

    async def _stop_watch(self) -> _Outcome:
        await self.stop.wait()
        await self._leave("agent stopping")
        return _Stopped()

    async def _leave(self, reason: str) -> None:
        """Say Goodbye (the server then raises nothing) and wait briefly for the acks of what is in flight."""
        if self.leaving is None:
            self.leaving = reason
        self.wake.set()
        await self.goodbye_sent.wait()
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.goodbye_flush_seconds):
                    await self.drained.wait()

    async def _failback_watch(self) -> _Outcome:
        primary = self.owner.choice.primary
        if self.owner.choice.on_primary:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.settings.failback_seconds)
            if await self.owner.probe(primary):
                await self._leave(f"failing back to the primary {primary}")
                return _FailBack()

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> _Outcome:
        while True:
            message = await self.call.read()
            if message is aio.EOF:
                if self.leaving is not None:
                    await asyncio.Event().wait()  # whoever is leaving decides how the stream ended
                code, details = await self.call.code(), await self.call.details()
                return _Failed(f"the server ended the stream ({code.name}: {details})", welcomed=True)
            body = message.WhichOneof("body")
            if body == "ack":
                await self._on_ack(message.ack)
            elif body == "redirect":
                redirect = message.redirect
                return _Redirected(redirect.server, tuple(redirect.failover_servers), redirect.reason)
            elif body == "renewal":
                if await self.owner.renewer.install(self.identity, message.renewal):
                    self.owner.state.renewals += 1
            elif body == "trust_update":
                await self._on_trust_update(message.trust_update)
            elif body == "config_update":
                self._on_config(message.config_update.config)
            elif body == "task_request":
                self._on_task(message.task_request)
            else:
                log.info("ignored a %s message from the server", body)

    async def _on_ack(self, ack: pb.Ack) -> None:
        for result in await self.queue.acknowledge([ack]):
            if result.fate is BatchFate.KEEP:
                continue
            self.in_flight.pop(result.seq, None)
            if result.fate is BatchFate.DEFERRED:
                retry = ack.retry_after_ms / 1000 if ack.retry_after_ms else DEFAULT_DEFERRED_RETRY_SECONDS
                self.deferred[result.seq] = time.monotonic() + retry
            elif result.fate is BatchFate.REJECTED:
                self.owner.state.rejected_batches += 1
                log.error("batch %d (%d items) rejected by the server and dropped, counted: %s", result.seq,
                          result.item_count, ack.reason)
        if not self.in_flight:
            self.drained.set()
        self.wake.set()

    async def _on_trust_update(self, update: pb.TrustUpdate) -> None:
        try:
            await asyncio.to_thread(self.owner.identity.write_trust, update.trust_bundle_pem)
        except IdentityError as exc:
            log.error("trust update not applied: %s", exc)
            return
        self.owner.state.trust_updates += 1
        log.info("trust bundle updated; the next connection uses it")

    def _on_config(self, config: pb.AgentConfig) -> None:
        self.heartbeat_seconds = self._heartbeat_seconds(config)
        self.owner.choice = self.owner.choice.with_failovers(tuple(config.failover_servers))
        if self.owner._config_listener is not None:
            self.owner._config_listener(config)

    def _on_task(self, request: pb.TaskRequest) -> None:
        handler = self.owner._task_handler
        if handler is None:
            result = pb.TaskResult(task_id=request.task_id, status=pb.TaskResult.STATUS_REFUSED,
                                   message="this agent runs no tasks")
            self.send(pb.AgentMessage(task_result=result))
            return

        async def run() -> None:
            self.send(pb.AgentMessage(task_result=await handler(request)))

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
