"""One agent's stream on 5723, after its certificate was accepted: Hello, then heartbeats, batches and acks.

Reading goes on past a batch that waits for room in a full pipeline: it waits parked, in arrival order, and the
heartbeats and control messages behind it are handled at once. Reading is still paced by the writers: a batch is
read only while the server-wide parking budget has room for the one before it and the session has fewer than
`session_inflight_batches` unacknowledged, so a slow database stops the reads and gRPC's flow control stops the
agent. The warehouse part of a bulk batch is deferred instead of waited for once the warehouse is stalled: the
operational ack still goes out, the warehouse ack says DEFERRED, nothing of it stays in memory, and the agent,
which keeps the batch until both acks, replays it to the warehouse alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import DecodeError
from grpc import aio

from opsmgr.db.model import Batch, Database, InvalidBatch
from opsmgr.db.writer import CommitOutcome, CommitResult
from opsmgr.kubeio.kube import KubeError
from opsmgr.pki.errors import CertificateError
from opsmgr.pki.names import Identity
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.limits import MAX_BATCH_ITEMS, MAX_MESSAGE_BYTES
from opsmgr.protocol.versions import UnsupportedVersion, VersionRange, negotiate
from opsmgr.server.admission import Refusal, admit_speaker
from opsmgr.server.convert import WIRE_DATABASES, owed_databases, to_batch
from opsmgr.server.directory import AgentDirectory
from opsmgr.server.ingest import BatchParking, BatchRefused, IngestPipeline
from opsmgr.server.metrics import ServerMetrics
from opsmgr.server.outbox import Outbox
from opsmgr.server.pack_rules import PackConfig
from opsmgr.server.presence import PresenceLedger, QueueReport
from opsmgr.server.renewal import CertificateRenewal, RenewalRefusal, RenewalRefused
from opsmgr.server.task_rules import SentTask, accept_result

log = logging.getLogger(__name__)

HELLO_TIMEOUT_SECONDS = 30.0
GOODBYE_FLUSH_SECONDS = 30.0
WRITE_DRAIN_SECONDS = 5.0
HEAR_OUT_IDLE_SECONDS, HEAR_OUT_MESSAGES = 0.05, 16  # a refused peer cannot hold the refusal back long
TaskResultListener = Callable[["AgentSession", SentTask, pb.TaskResult], None]
_OUTCOMES = {CommitOutcome.COMMITTED: pb.Ack.OUTCOME_COMMITTED,
             CommitOutcome.ALREADY_COMMITTED: pb.Ack.OUTCOME_ALREADY_COMMITTED}


@dataclass(frozen=True)
class SessionSettings:
    server_name: str
    heartbeat_interval_seconds: int
    inflight_batches: int
    deferred_retry_ms: int


@dataclass(frozen=True)
class Closing:
    """Why the server ends a stream: a gRPC status and a reason the agent's log shows."""

    code: grpc.StatusCode
    refusal: Refusal


class AgentSession:
    def __init__(self, context: aio.ServicerContext[bytes, bytes], identity: Identity, serial: int, *,
                 settings: SessionSettings, pipelines: Mapping[Database, IngestPipeline], parking: BatchParking,
                 metrics: ServerMetrics, presence: PresenceLedger, directory: AgentDirectory, peer: str,
                 certificate: x509.Certificate | None = None,
                 renewal: Callable[[], CertificateRenewal | None] = lambda: None) -> None:
        self.context = context
        self.identity = identity
        self.serial = serial
        self.settings = settings
        self.pipelines = pipelines
        self.parking = parking
        self.metrics = metrics
        self.presence = presence
        self.directory = directory
        self.peer = peer
        self.session_id = uuid.uuid4().hex
        self.agent: str | None = None  # set by Hello
        self._outbox: Outbox[pb.ServerMessage] = Outbox(limit=2 * settings.inflight_batches + 16)
        self._inflight = asyncio.Semaphore(settings.inflight_batches)
        # Batches read and not yet in a pipeline, in arrival order, each with its wire size taken from `parking`.
        # Bounded by the in-flight slots `_park` takes first, so putting never waits.
        self._parked: Outbox[tuple[pb.DataBatch, int]] = Outbox(limit=settings.inflight_batches)
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Future[Closing] = asyncio.get_running_loop().create_future()
        self._write: asyncio.Future[None] | None = None  # the write in flight, if any
        self._on_bound: Callable[[AgentSession], None] = lambda _session: None
        # The TLS-verified peer certificate, kept as DER and parsed again only for a renewal: a parsed certificate
        # with its names and extensions read costs about 5 KB, for each of 10,000 connected agents.
        self._certificate_der = certificate.public_bytes(Encoding.DER) if certificate is not None else None
        self.renewal = renewal
        self._renewing: asyncio.Task[None] | None = None
        # Runs sent on this stream, by task id: the only results this stream may report (see task_rules).
        self.tasks_sent: dict[str, SentTask] = {}
        self.on_task_result: TaskResultListener | None = None
        # The agent's packs (set with Kubernetes access; see packs.PackDelivery), and the version of those last
        # queued for it: None until the Welcome is, "" when the Welcome said nothing about packs.
        self.packs_of: Callable[[str], PackConfig | None] = lambda _agent: None
        self.config_version: str | None = None

    @property
    def certificate(self) -> x509.Certificate | None:
        der = self._certificate_der
        return x509.load_der_x509_certificate(der) if der is not None else None

    def fields(self, **more: object) -> dict[str, Any]:
        return {"peer": self.peer, "identity": self.identity.name, "role": self.identity.role.value,
                "agent": self.agent, "session": self.session_id, **more}

    def close(self, code: grpc.StatusCode, refusal: Refusal) -> None:
        """End the stream from outside (revocation, directory change, a newer stream); safe to call twice."""
        if not self._closing.done():
            self._closing.set_result(Closing(code, refusal))

    def refuse(self, refusal: Refusal, *, what: str) -> None:
        self.metrics.refusals.labels(refusal.reason).inc()
        log.warning(f"{what} refused", extra={"fields": self.fields(reason=refusal.reason, detail=refusal.message)})

    async def run(self, on_bound: Callable[[AgentSession], None]) -> Closing | None:
        """Serve the stream until the agent ends it or the server closes it; returns why the server closed it.

        `on_bound` runs once Hello named the agent (the channel indexes the stream by agent then).
        """
        self._on_bound = on_bound
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.session_id}")
        reader = asyncio.create_task(self._converse(), name=f"read-{self.session_id}")
        admitter = asyncio.create_task(self._admit_parked(), name=f"admit-{self.session_id}")
        try:
            watched: set[asyncio.Future[Any]] = {reader, self._closing, sender, admitter}
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if admitter in done:
                admitter.result()  # it ends only by failing: that error ends the stream
            if self._closing in done:
                return self._closing.result()
            if reader in done:
                closing = reader.result()
                if closing is None:
                    await self._flush()
                else:
                    await self._hear_out()
                return closing
            return sender.result()  # the peer went away while we wrote: nothing left to say
        finally:
            for task in (reader, sender, admitter, *self._ack_tasks):
                task.cancel()
            await asyncio.gather(reader, sender, admitter, *self._ack_tasks, return_exceptions=True)
            for _, size in self._parked.clear():  # never admitted: their budget goes to other streams
                self.parking.leave(size)
            if self._write is not None:
                # Bounded: a peer that stopped reading never lets a write finish; its call ends when it goes.
                await asyncio.wait({self._write}, timeout=WRITE_DRAIN_SECONDS)

    async def _hear_out(self) -> None:
        """Before refusing, read what the peer already sent (bounded): a refusal that overtakes the peer's own
        writes fails them on its side as INTERNAL, and it never hears why it was refused."""
        with contextlib.suppress(TimeoutError, aio.AioRpcError, asyncio.InvalidStateError):
            for _ in range(HEAR_OUT_MESSAGES):
                async with asyncio.timeout(HEAR_OUT_IDLE_SECONDS):  # writes already under way arrive at once
                    if await self.context.read() is aio.EOF:
                        return

    async def _flush(self) -> None:
        """After the agent's Goodbye or end of writing: let in-flight batches finish and their acks go out."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GOODBYE_FLUSH_SECONDS):
                await self._parked.join()
                while self._ack_tasks:
                    await asyncio.gather(*self._ack_tasks, return_exceptions=True)
                await self._outbox.join()

    async def _send_loop(self) -> None:
        while True:
            message = await self._outbox.get()
            # A write cancelled midway leaves its operation pending in gRPC's core; the status that ends the stream
            # then fails (TOO_MANY_OPERATIONS) and the stream hangs open. So a write always runs to its end.
            write = self._write = asyncio.ensure_future(self.context.write(message))
            write.add_done_callback(_retrieved)
            try:
                await asyncio.shield(write)
            finally:
                self._outbox.task_done()

    async def _read(self) -> tuple[pb.AgentMessage, int] | None:
        """The next message and its size on the wire, or None at the end of the agent's writing."""
        raw = await self.context.read()
        if raw is aio.EOF:
            return None
        assert isinstance(raw, bytes)
        try:
            message = pb.AgentMessage.FromString(raw)
        except DecodeError as exc:
            raise _Malformed(Refusal("Malformed", f"a message is not an AgentMessage ({exc})")) from None
        if len(raw) > MAX_MESSAGE_BYTES:
            too_large = Refusal("MessageTooLarge", f"a message of {len(raw)} bytes exceeds the limit of "
                                                   f"{MAX_MESSAGE_BYTES}: form smaller batches")
            if message.WhichOneof("body") != "batch":
                raise _Malformed(too_large)
            raise _Oversized(too_large, message.batch)
        return message, len(raw)

    async def _converse(self) -> Closing | None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_SECONDS):
                first = await self._read()
        except TimeoutError:
            return Closing(grpc.StatusCode.DEADLINE_EXCEEDED,
                           Refusal("NoHello", f"no Hello within {HELLO_TIMEOUT_SECONDS:.0f} s of opening the stream"))
        except _Malformed as bad:
            return Closing(grpc.StatusCode.INVALID_ARGUMENT, bad.refusal)
        if first is None:
            return None
        closing = await self._hello(first[0])
        del first  # this frame lasts as long as the stream; the Hello need not
        if closing is not None:
            return closing
        assert self.agent is not None
        self.metrics.connected_agents.inc()
        try:
            return await self._serve()
        finally:
            self.metrics.connected_agents.dec()
            self.presence.disconnected(self.agent, self.session_id, datetime.now(UTC))

    async def _hello(self, message: pb.AgentMessage) -> Closing | None:
        if message.WhichOneof("body") != "hello":
            return Closing(grpc.StatusCode.FAILED_PRECONDITION,
                           Refusal("NoHello", f"the first message was {message.WhichOneof('body')}, not Hello"))
        hello = message.hello
        try:
            version = negotiate(VersionRange(hello.min_version, hello.max_version))
        except UnsupportedVersion as exc:
            return Closing(grpc.StatusCode.FAILED_PRECONDITION, Refusal("UnsupportedVersion", str(exc)))
        agent = (hello.agent or self.identity.name).strip().lower().removesuffix(".")
        refusal = admit_speaker(self.identity, agent, self.directory)
        if refusal is not None:
            return Closing(refusal_status(refusal), refusal)
        self.agent = agent
        self._on_bound(self)
        via = self.identity.name if agent != self.identity.name else None
        self.presence.connected(agent, self.session_id, via, datetime.now(UTC), _queue(hello.queue)
                                if hello.HasField("queue") else None)
        await self._outbox.put(pb.ServerMessage(welcome=pb.Welcome(
            version=version, server=self.settings.server_name, session_id=self.session_id,
            config=self._agent_config(self.packs_of(agent)),
            limits=pb.Limits(max_message_bytes=MAX_MESSAGE_BYTES, max_batch_items=MAX_BATCH_ITEMS))))
        log.info("agent connected", extra={"fields": self.fields(version=version, epoch=hello.epoch,
                                                                 agent_version=hello.agent_version,
                                                                 config_version=self.config_version)})
        return None

    def _agent_config(self, packs: PackConfig | None) -> pb.AgentConfig:
        """The config of a Welcome or ConfigUpdate; the agent takes each whole, so both carry the heartbeat."""
        config = pb.AgentConfig(heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds)
        if packs is not None:
            config.management_packs_json, config.config_version = packs.packs_json, packs.version
        self.config_version = packs.version if packs is not None else ""
        return config

    async def send_config(self, packs: PackConfig) -> None:
        """A ConfigUpdate with the agent's new packs, which it applies without a restart."""
        await self._outbox.put(pb.ServerMessage(config_update=pb.ConfigUpdate(config=self._agent_config(packs))))

    async def _serve(self) -> Closing | None:
        assert self.agent is not None
        while True:
            # Let go of the last message before waiting for the next, which may be a heartbeat interval away: else
            # every agent's last batch (up to 4 MB) stays in memory meanwhile.
            message, beat, received = None, None, None
            try:
                received = await self._read()
            except _Oversized as big:
                await self._reject(big.batch, big.refusal)
                continue
            except _Malformed as bad:
                # An undecodable message leaves no batch to reject; the stream cannot be trusted to be in step.
                return Closing(grpc.StatusCode.INVALID_ARGUMENT, bad.refusal)
            if received is None:
                return None
            message, size = received
            body = message.WhichOneof("body")
            if body == "batch":
                await self._park(message.batch, size)
            elif body == "heartbeat":
                beat = message.heartbeat
                now = datetime.now(UTC)
                self.presence.heartbeat(self.agent, self.session_id, now, beat.seq,
                                        _queue(beat.queue) if beat.HasField("queue") else None)
                if beat.HasField("sent_at"):
                    # A time protobuf cannot represent (seconds past year 9999, nanos out of range) measures nothing.
                    with contextlib.suppress(ValueError):
                        # A clock behind ours would give a negative delay; it counts as none.
                        delay = now.timestamp() - beat.sent_at.ToNanoseconds() / 1e9
                        self.metrics.heartbeat_delay.observe(max(0.0, delay))
            elif body == "goodbye":
                self.presence.goodbye(self.agent, self.session_id, datetime.now(UTC), message.goodbye.reason)
                log.info("agent said goodbye", extra={"fields": self.fields(reason=message.goodbye.reason)})
                return None
            elif body == "task_result":
                self._on_task_result(message.task_result)
            elif body == "hello":
                return Closing(grpc.StatusCode.FAILED_PRECONDITION,
                               Refusal("RepeatedHello", "Hello is sent once, first; open a new stream to start over"))
            elif body == "renewal_request":
                await self._on_renewal_request(message.renewal_request)
            else:
                # A body this version does not know (a newer agent's): say so rather than drop it silently.
                log.info("message not served", extra={"fields": self.fields(body=body)})

    async def _on_renewal_request(self, request: pb.RenewalRequest) -> None:
        """Signed beside the stream, never in its way: heartbeats and batches go on while the CA is read."""
        if self._renewing is not None and not self._renewing.done():
            await self._answer_renewal(RenewalRefusal(
                "RenewalInProgress", "a renewal asked on this stream is not answered yet; wait for its answer"))
            return
        self._renewing = asyncio.create_task(self._renew(request.csr_pem), name=f"renew-{self.session_id}")
        self._ack_tasks.add(self._renewing)
        self._renewing.add_done_callback(self._ack_tasks.discard)

    async def _renew(self, csr: bytes) -> None:
        assert self.agent is not None
        renewal = self.renewal()  # read now: the server gains its Kubernetes access after it starts listening
        certificate = self.certificate
        if renewal is None or certificate is None:
            refusal = RenewalRefusal("RenewalUnavailable", "this management server has no Kubernetes access, so no "
                                                           "CA to sign with. Fix: enroll the agent again when due")
            log.warning("certificate renewal refused", extra={"fields": self.fields(reason=refusal.reason)})
            await self._answer_renewal(refusal)
            return
        try:
            answer = await renewal.renew(certificate, self.identity, self.agent, csr)
        except RenewalRefused as refused:
            await self._answer_renewal(refused.refusal)
            return
        except (KubeError, CertificateError, OSError) as exc:
            # The CA Secret or the API server was unreachable: the agent asks again at its next check.
            log.warning("certificate renewal failed", extra={"fields": self.fields(error=str(exc))})
            await self._answer_renewal(RenewalRefusal("RenewalFailed", f"the server could not sign now ({exc}); the "
                                                                  "agent asks again later"))
            return
        await self._outbox.put(pb.ServerMessage(renewal=answer))

    async def _answer_renewal(self, refusal: RenewalRefusal) -> None:
        self.metrics.refusals.labels(refusal.reason).inc()
        await self._outbox.put(pb.ServerMessage(renewal=pb.Renewal(refused_reason=refusal.reason,
                                                                    message=refusal.message)))

    async def send_task(self, sent: SentTask, request: pb.TaskRequest) -> None:
        """Send a run to the agent; its result is accepted from this stream only."""
        self.tasks_sent[sent.task_id] = sent
        await self._outbox.put(pb.ServerMessage(task_request=request))

    def _on_task_result(self, result: pb.TaskResult) -> None:
        accepted = accept_result(result.task_id, self.tasks_sent)
        if isinstance(accepted, Refusal):
            # An agent must not write the status of a run it was not sent (another agent's): refused, stream goes on.
            self.refuse(accepted, what="task result")
            return
        del self.tasks_sent[result.task_id]  # reported once
        if self.on_task_result is not None:
            self.on_task_result(self, accepted, result)

    async def _park(self, wire: pb.DataBatch, size: int) -> None:
        """Hand the batch to this stream's admitter and read on; wait only for an in-flight slot and the budget."""
        await self._inflight.acquire()
        try:
            await self.parking.park(size)
        except BaseException:
            self._inflight.release()
            raise
        await self._parked.put((wire, size))

    async def _admit_parked(self) -> None:
        """Into the pipelines in the order read; a batch's budget is given back once a pipeline holds it."""
        while True:
            wire, size = await self._parked.get()
            try:
                await self._on_batch(wire)
            finally:
                self.parking.leave(size)
                self._parked.task_done()

    async def _on_batch(self, wire: pb.DataBatch) -> None:
        """Submit a parked batch, holding the in-flight slot `_park` took until its acks are out."""
        try:
            admitted = await self._admit(wire)
        except BaseException:
            self._inflight.release()
            raise
        if isinstance(admitted, Refusal):
            self._inflight.release()
            await self._reject(wire, admitted)
            return
        task = asyncio.create_task(self._acknowledge(*admitted))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def _admit(self, wire: pb.DataBatch) -> tuple[Batch, dict[Database, asyncio.Future[CommitResult]],
                                                        list[Database]] | Refusal:
        """Into the pipelines the batch owes: the futures of its commits and the databases deferred; or why the
        batch is invalid."""
        assert self.agent is not None
        operational = self.pipelines[Database.OPERATIONAL]
        # Room first, then the batch's model objects (about 50 ms and 2 MB per 5,000 items): formed as the writers
        # make room, not for every waiting stream at once, which held the event loop (and heartbeats) for seconds.
        room = await operational.reserve(len(wire.items)) if _may_owe_operational(wire) else None
        try:
            try:
                batch = to_batch(self.agent, wire)
                owed = owed_databases(batch, wire)
            except InvalidBatch as exc:
                return Refusal("InvalidBatch", str(exc))
            pending: dict[Database, asyncio.Future[CommitResult]] = {}
            deferred: list[Database] = []
            if Database.OPERATIONAL in owed:
                if room is None:
                    room = await operational.reserve(batch.size)
                    assert room is not None
                pending[Database.OPERATIONAL], room = await operational.enqueue(batch, room), None
            if Database.WAREHOUSE in owed:
                warehouse = await self.pipelines[Database.WAREHOUSE].submit(batch, refuse_when_stalled=True)
                if warehouse is None:
                    deferred.append(Database.WAREHOUSE)
                else:
                    pending[Database.WAREHOUSE] = warehouse
            return batch, pending, deferred
        finally:
            if room is not None:  # taken and not used: the batch was invalid, or a replay to the warehouse alone
                await operational.release(room)

    async def _reject(self, wire: pb.DataBatch, refusal: Refusal) -> None:
        """The batch itself is bad: REJECTED for every database, so the agent drops it; the stream goes on."""
        self.refuse(refusal, what="batch")
        self.metrics.acks.labels("all", "rejected").inc()
        await self._outbox.put(pb.ServerMessage(ack=pb.Ack(
            epoch=wire.epoch[:64], seq=wire.seq, database=pb.DATABASE_UNSPECIFIED, outcome=pb.Ack.OUTCOME_REJECTED,
            reason=refusal.message)))

    async def _acknowledge(self, batch: Batch, pending: Mapping[Database, asyncio.Future[CommitResult]],
                           deferred: list[Database]) -> None:
        """Ack each database as soon as it committed; give up waiting on a warehouse that stalled meanwhile."""
        try:
            for database in deferred:
                await self._send_ack(batch, database, None, f"the {database.value} database is behind")
            # asyncio.wait, not await: cancelling this task must never cancel the pipeline's futures.
            waiting = {future: database for database, future in pending.items()}
            while waiting:
                done, _ = await asyncio.wait(waiting, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    database = waiting.pop(future)
                    failure = future.exception()
                    if isinstance(failure, BatchRefused):
                        await self._send_rejection(batch, database, str(failure))
                    elif failure is not None:
                        await self._send_ack(batch, database, None, str(failure))
                    else:
                        await self._send_ack(batch, database, future.result(), "")
                for future, database in list(waiting.items()):
                    # The queued write may still commit later; the replay then finds it ALREADY_COMMITTED.
                    if database is Database.WAREHOUSE and self.pipelines[database].stalled():
                        del waiting[future]
                        await self._send_ack(batch, database, None, f"the {database.value} database is stalled")
        finally:
            self._inflight.release()

    async def _send_rejection(self, batch: Batch, database: Database, reason: str) -> None:
        self.metrics.acks.labels(database.value, "rejected").inc()
        await self._outbox.put(pb.ServerMessage(ack=pb.Ack(
            epoch=str(batch.epoch), seq=batch.seq, database=WIRE_DATABASES[database],
            outcome=pb.Ack.OUTCOME_REJECTED, reason=reason)))

    async def _send_ack(self, batch: Batch, database: Database, result: CommitResult | None, reason: str) -> None:
        if result is None:
            outcome, label = pb.Ack.OUTCOME_DEFERRED, "deferred"
            ack = pb.Ack(epoch=str(batch.epoch), seq=batch.seq, database=WIRE_DATABASES[database], outcome=outcome,
                         reason=f"{reason}: keep the batch and replay it",
                         retry_after_ms=self.settings.deferred_retry_ms)
        else:
            outcome, label = _OUTCOMES[result.outcome], result.outcome.value
            ack = pb.Ack(epoch=str(batch.epoch), seq=batch.seq, database=WIRE_DATABASES[database], outcome=outcome,
                         dropped_items=sum(result.dropped.values()))
        self.metrics.acks.labels(database.value, label).inc()
        await self._outbox.put(pb.ServerMessage(ack=ack))


class _Malformed(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class _Oversized(_Malformed):
    def __init__(self, refusal: Refusal, batch: pb.DataBatch) -> None:
        super().__init__(refusal)
        self.batch = batch


def _retrieved(write: asyncio.Future[None]) -> None:
    # A write outlives its sender when the stream closes; a peer gone meanwhile is not worth a warning.
    if not write.cancelled():
        write.exception()


def _may_owe_operational(wire: pb.DataBatch) -> bool:
    """Every batch belongs to the operational DB; a replay that names its databases may leave it out."""
    return not wire.databases or pb.DATABASE_OPERATIONAL in wire.databases


def _queue(status: pb.QueueStatus) -> QueueReport:
    return QueueReport(status.depth_items, status.size_bytes, status.limit_bytes, status.evicted_items_total)


def refusal_status(refusal: Refusal) -> grpc.StatusCode:
    """UNAVAILABLE for a refusal the peer should simply retry, PERMISSION_DENIED for one that needs a person."""
    return grpc.StatusCode.UNAVAILABLE if refusal.retry else grpc.StatusCode.PERMISSION_DENIED
