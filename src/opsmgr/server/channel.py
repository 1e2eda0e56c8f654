"""The agent channel's gRPC service: binds each stream to its certificate, admits it, and runs its session.

Requests arrive as raw bytes and are parsed by the session, so a malformed or oversized message is refused
with our own logged reason instead of gRPC's generic one. Live streams are indexed by certificate serial and by
agent, so a revocation or a directory change closes exactly the streams it concerns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

import grpc
from grpc import aio

from opsmgr.db.model import Database
from opsmgr.pki.errors import CertificateError
from opsmgr.pki.revocation_watch import RevocationWatch
from opsmgr.pki.verify import authorize_peer, peer_certificate
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.admission import Refusal, admit_speaker, admit_stream, claimed_role
from opsmgr.server.directory import AgentDirectory
from opsmgr.server.ingest import BatchParking, IngestPipeline
from opsmgr.server.metrics import ServerMetrics
from opsmgr.server.pack_rules import PackConfig
from opsmgr.server.presence import PresenceLedger
from opsmgr.server.renewal import CertificateRenewal
from opsmgr.server.session import AgentSession, SessionSettings, refusal_status
from opsmgr.server.task_rules import SentTask

log = logging.getLogger(__name__)

SERVICE = "opsmgr.agentchannel.v1.AgentChannel"
REFUSAL_READ_SECONDS = 2.0  # a peer that sends nothing is refused after this; ours send Hello at once
SERVER_STOPPING = Refusal("ServerStopping", "the management server is stopping; connect to another one")


class TaskListener(Protocol):
    """What delivers AgentTasks (`tasks.TaskDispatcher`, with Kubernetes access): told of each bound stream and of
    each result a stream accepted."""

    def agent_connected(self, session: AgentSession) -> None: ...

    def task_reported(self, session: AgentSession, sent: SentTask, result: pb.TaskResult) -> None: ...


class AgentChannel:
    def __init__(self, *, group: str, settings: SessionSettings, pipelines: Mapping[Database, IngestPipeline],
                 parking: BatchParking, metrics: ServerMetrics, presence: PresenceLedger, directory: AgentDirectory,
                 revocations: RevocationWatch) -> None:
        self.group = group
        self.settings = settings
        self.pipelines = pipelines
        self.parking = parking
        self.metrics = metrics
        self.presence = presence
        self.directory = directory
        self.revocations = revocations
        self.by_serial: dict[int, set[AgentSession]] = defaultdict(set)
        self.by_agent: dict[str, AgentSession] = {}
        self.stopping = False
        self.renewal: CertificateRenewal | None = None  # set once the server has Kubernetes access (the CA)
        self.tasks: TaskListener | None = None  # set once the AgentTask watch runs
        self.packs_of: Callable[[str], PackConfig | None] | None = None  # set once the ManagementPack watch runs
        revocations.on_revoked(self.close_revoked)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(self.connect, request_deserializer=None,
                                                       response_serializer=lambda m: m.SerializeToString())
        return grpc.method_handlers_generic_handler(SERVICE, {"Connect": method})

    def sessions(self) -> list[AgentSession]:
        return [session for sessions in self.by_serial.values() for session in sessions]

    async def connect(self, requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]) -> None:
        peer = context.peer()
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPING.message)
        try:
            certificate = peer_certificate(context.auth_context())
            role, name = claimed_role(certificate, self.directory)
            identity = authorize_peer(certificate, group=self.group, role=role, revocations=self.revocations.current,
                                      now=datetime.now(UTC), name=name)
        except CertificateError as refused:
            self._refuse_open(peer, None, Refusal(refused.reason, str(refused)))
            await _take_hello(context)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(refused))
        refusal = admit_stream(identity, self.directory)
        if refusal is not None:
            self._refuse_open(peer, identity.name, refusal)
            await _take_hello(context)
            await context.abort(refusal_status(refusal), refusal.message)
        session = AgentSession(context, identity, certificate.serial_number, settings=self.settings,
                               pipelines=self.pipelines, parking=self.parking, metrics=self.metrics,
                               presence=self.presence, directory=self.directory, peer=peer, certificate=certificate,
                               renewal=lambda: self.renewal)
        # This coroutine lives as long as the stream: the parsed certificate must not (the session keeps its DER).
        del certificate
        if self.tasks is not None:
            session.on_task_result = self.tasks.task_reported
        if self.packs_of is not None:
            session.packs_of = self.packs_of
        self.by_serial[session.serial].add(session)
        try:
            closing = await session.run(self._bound)
        finally:
            self._forget(session)
        if closing is not None:
            if closing.refusal is SERVER_STOPPING:
                log.info("stream closed: server stopping", extra={"fields": session.fields()})
            else:
                session.refuse(closing.refusal, what="stream")
            await context.abort(closing.code, closing.refusal.message)

    def _bound(self, session: AgentSession) -> None:
        """Called once Hello named the agent: a newer stream of the same agent replaces an older one."""
        assert session.agent is not None
        older = self.by_agent.get(session.agent)
        self.by_agent[session.agent] = session
        if older is not None and older is not session:
            older.close(grpc.StatusCode.ABORTED, Refusal("Replaced", "a newer stream of this agent replaced this one"))
        if self.tasks is not None:
            # Its pending runs waited for this stream. Each is sent after the pack is read, so after the Welcome that
            # the session queues right after this call.
            self.tasks.agent_connected(session)

    def _forget(self, session: AgentSession) -> None:
        sessions = self.by_serial.get(session.serial)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.by_serial[session.serial]
        if session.agent is not None and self.by_agent.get(session.agent) is session:
            del self.by_agent[session.agent]

    def _refuse_open(self, peer: str, identity: str | None, refusal: Refusal) -> None:
        self.metrics.refusals.labels(refusal.reason).inc()
        log.warning("stream refused", extra={"fields": {"peer": peer, "identity": identity, "reason": refusal.reason,
                                                        "detail": refusal.message}})

    def stop(self) -> None:
        """The server is stopping: end every stream now, so its agent moves to another server at once instead of
        after the gRPC grace period. Each session first finishes the write in flight; batches written but not yet
        acknowledged are sent again by the agent, and the server takes them once."""
        self.stopping = True
        for session in self.sessions():
            session.close(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPING)

    def close_revoked(self, serials: frozenset[int]) -> None:
        for serial in serials:
            for session in list(self.by_serial.get(serial, ())):
                session.close(grpc.StatusCode.PERMISSION_DENIED, Refusal(
                    "Revoked", f"certificate serial {serial:x} was revoked while the stream was open"))

    def recheck_directory(self) -> None:
        """After the directory changed: close streams whose agent or gateway is no longer known and approved."""
        for session in self.sessions():
            refusal = admit_stream(session.identity, self.directory)
            if refusal is None and session.agent is not None:
                refusal = admit_speaker(session.identity, session.agent, self.directory)
            if refusal is not None and not refusal.retry:  # a directory still loading closes nothing it admitted
                session.close(grpc.StatusCode.PERMISSION_DENIED, refusal)


async def _take_hello(context: aio.ServicerContext[bytes, bytes]) -> None:
    """Read the peer's first message before refusing it. An agent writes Hello as it opens the stream; a refusal
    that overtakes that write fails it on the agent's side as INTERNAL ("Internal error from Core"), and the agent
    would log that instead of why it was refused (about 2 % of refusals at open did)."""
    with contextlib.suppress(TimeoutError, aio.AioRpcError, asyncio.InvalidStateError):
        async with asyncio.timeout(REFUSAL_READ_SECONDS):
            await context.read()
