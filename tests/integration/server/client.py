"""A test agent that speaks the agent channel over real mTLS: streams, batches and per-database acks.

`ReplayingAgent` behaves like an agent with a durable queue kept in memory: a batch stays until every database
it is owed to acknowledged it, and after a broken stream every unacknowledged batch is replayed, interleaved with
new ones.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.versions import MAX_VERSION, MIN_VERSION

METHOD = "/opsmgr.agentchannel.v1.AgentChannel/Connect"
TARGET_NAME = "ms.opsmgr.svc"
NO_PROXY = ("grpc.enable_http_proxy", 0)
OPERATIONAL, WAREHOUSE = pb.DATABASE_OPERATIONAL, pb.DATABASE_WAREHOUSE
SETTLED = (pb.Ack.OUTCOME_COMMITTED, pb.Ack.OUTCOME_ALREADY_COMMITTED)


@dataclass(frozen=True)
class Credentials:
    key_pem: bytes
    certificate_pem: bytes
    ca_pem: bytes


def channel(port: int, credentials: Credentials) -> aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=credentials.ca_pem, private_key=credentials.key_pem,
                                         certificate_chain=credentials.certificate_pem)
    return aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", TARGET_NAME),
                                                                    NO_PROXY])


class AgentStream:
    """One open Connect stream; messages go out as raw bytes so tests can also send garbage."""

    def __init__(self, chan: aio.Channel) -> None:
        self.call = chan.stream_stream(METHOD, request_serializer=None,
                                       response_deserializer=pb.ServerMessage.FromString)()

    async def send(self, message: pb.AgentMessage | bytes) -> None:
        await self.call.write(message if isinstance(message, bytes) else message.SerializeToString())

    async def receive(self, within: float = 20) -> pb.ServerMessage | None:
        async with asyncio.timeout(within):
            reply = await self.call.read()
        return None if reply is aio.EOF else reply

    async def hello(self, agent: str = "", *, min_version: int = MIN_VERSION, max_version: int = MAX_VERSION,
                    epoch: str = "") -> pb.Welcome:
        await self.send(pb.AgentMessage(hello=pb.Hello(min_version=min_version, max_version=max_version, agent=agent,
                                                       agent_version="test", epoch=epoch)))
        reply = await self.receive()
        if reply is None or reply.WhichOneof("body") != "welcome":
            raise ConnectionError(f"no Welcome: {reply}")
        return reply.welcome

    async def acks_until(self, count: int, within: float = 30) -> list[pb.Ack]:
        acks: list[pb.Ack] = []
        async with asyncio.timeout(within):
            while len(acks) < count:
                reply = await self.receive(within)
                assert reply is not None, "the stream ended before every ack arrived"
                if reply.WhichOneof("body") == "ack":
                    acks.append(reply.ack)
        return acks

    async def status(self) -> tuple[grpc.StatusCode, str]:
        return await self.call.code(), await self.call.details()


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


@dataclass
class ItemFactory:
    """Items with unique keys per kind, so every row in a database can be traced to exactly one generated item."""

    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    counter: Iterator[int] = field(default_factory=itertools.count)
    generated: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in
                                                                     ("event", "performance", "state", "alert",
                                                                      "discovery")})

    def _key(self, kind: str) -> str:
        key = f"{kind}:{self.prefix}:{next(self.counter)}"
        self.generated[kind].add(key)
        return key

    def _when(self) -> Timestamp:
        return stamp(datetime.now(UTC) - timedelta(seconds=random.randint(0, 600)))

    def bulk(self, count: int) -> list[pb.Item]:
        items = []
        for n in range(count):
            if n % 2:
                items.append(pb.Item(event=pb.Event(logged_at=self._when(), object_key=self._key("event"),
                                                    channel="syslog", source="sshd", number=4625, level=3,
                                                    description="Failed password")))
            else:
                items.append(pb.Item(performance=pb.PerformanceSample(
                    sampled_at=self._when(), object_key=self._key("performance"), object_name="Processor",
                    counter_name="% Processor Time", instance_name="_Total", value=random.random() * 100)))
        return items

    def priority(self, count: int) -> list[pb.Item]:
        items = []
        for n in range(count):
            if n % 3 == 0:
                items.append(pb.Item(alert=pb.Alert(raised_at=self._when(), object_key=self._key("alert"),
                                                    source="Linux.DiskFull", name="Disk full", description="/var",
                                                    severity=2, priority=1)))
            elif n % 3 == 1:
                items.append(pb.Item(state=pb.StateChange(changed_at=self._when(), object_key=self._key("state"),
                                                          monitor="Linux.DiskSpace", old_state=1, new_state=3)))
            else:
                items.append(pb.Item(discovery=pb.DiscoveryItem(
                    discovered_at=self._when(), object_key=self._key("discovery"), class_name="Linux.FileSystem",
                    display_name="/var", properties={"size": "10G"})))
        return items


def owed(batch: pb.DataBatch) -> frozenset[pb.Database]:
    """The databases that must ack `batch`: events, performance and state go to both, the rest to operational."""
    both = any(item.WhichOneof("kind") in ("event", "performance", "state") for item in batch.items)
    return frozenset({OPERATIONAL, WAREHOUSE}) if both else frozenset({OPERATIONAL})


@dataclass
class QueuedBatch:
    batch: pb.DataBatch
    owed: set[pb.Database]


@dataclass
class ReplayingAgent:
    """Sends batches and replays whatever is unacknowledged after every broken stream, until all are settled."""

    port: int
    credentials: Credentials
    items: ItemFactory = field(default_factory=ItemFactory)
    epoch: str = field(default_factory=lambda: str(uuid.uuid4()))
    next_seq: int = 0
    queue: dict[tuple[str, int], QueuedBatch] = field(default_factory=dict)
    streams_opened: int = 0
    rejected: list[pb.Ack] = field(default_factory=list)
    deferred: int = 0
    history: list[pb.DataBatch] = field(default_factory=list)  # every batch ever formed, for replay tests
    # A database that answered DEFERRED gets nothing until this loop time, as a real agent backs off.
    paused_until: dict[pb.Database, float] = field(default_factory=dict)

    def new_batch(self, lane: pb.Lane, size: int) -> QueuedBatch:
        items = self.items.priority(size) if lane == pb.LANE_PRIORITY else self.items.bulk(size)
        batch = pb.DataBatch(epoch=self.epoch, seq=self.next_seq, lane=lane, items=items)
        self.next_seq += 1
        self.history.append(batch)
        queued = QueuedBatch(batch, set(owed(batch)))
        self.queue[(batch.epoch, batch.seq)] = queued
        return queued

    def reset_epoch(self) -> None:
        """A reinstall: a new queue id, sequence numbers from 0 again; old batches stay queued under the old one."""
        self.epoch = str(uuid.uuid4())
        self.next_seq = 0

    def settle(self, ack: pb.Ack) -> None:
        queued = self.queue.get((ack.epoch, ack.seq))
        if queued is None:
            return
        if ack.outcome in SETTLED:
            queued.owed.discard(ack.database)
        elif ack.outcome == pb.Ack.OUTCOME_REJECTED:
            self.rejected.append(ack)
            queued.owed.clear()
        elif ack.outcome == pb.Ack.OUTCOME_DEFERRED:
            self.deferred += 1
            self.paused_until[ack.database] = asyncio.get_running_loop().time() + ack.retry_after_ms / 1000
        if not queued.owed:
            del self.queue[(ack.epoch, ack.seq)]

    def sendable(self, queued: QueuedBatch, now: float) -> set[pb.Database]:
        return {database for database in queued.owed if self.paused_until.get(database, 0.0) <= now}

    async def run_session(self, new_batches: int, *, size: int = 20, window: int = 16,
                          stop_when_settled: bool = True, pace: float = 0.0) -> None:
        """One stream: replay what is owed, interleaved with `new_batches` new ones; returns when the stream breaks
        or (with `stop_when_settled`) when everything sent was acknowledged."""
        async with channel(self.port, self.credentials) as chan:
            stream = AgentStream(chan)
            self.streams_opened += 1
            await stream.hello(epoch=self.epoch)
            sent: dict[tuple[str, int], set[pb.Database]] = {}
            created = 0
            next_new = 0.0
            reader = asyncio.create_task(self._read_acks(stream, sent))
            try:
                while True:
                    now = asyncio.get_running_loop().time()
                    replay = [q for key, q in self.queue.items() if key not in sent and self.sendable(q, now)]
                    due = created < new_batches and now >= next_new
                    if due and (not replay or random.random() < 0.5):
                        lane = random.choice((pb.LANE_PRIORITY, pb.LANE_BULK))
                        replay.insert(0, self.new_batch(lane, size))
                        created += 1
                        next_new = now + pace
                    if not replay:
                        if reader.done():
                            return reader.result()
                        if stop_when_settled and created >= new_batches and not self.queue:
                            return None
                        await asyncio.sleep(min(0.05, pace) if pace else 0.05)
                        continue
                    while len(sent) >= window and not reader.done():
                        await asyncio.wait([reader], timeout=0.005)
                    if reader.done():
                        return reader.result()
                    queued = replay[0]
                    message = pb.DataBatch()
                    message.CopyFrom(queued.batch)
                    targets = self.sendable(queued, now)
                    if targets != owed(queued.batch):
                        message.databases[:] = sorted(targets)
                    sent[(message.epoch, message.seq)] = targets
                    await stream.send(pb.AgentMessage(batch=message))
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read_acks(self, stream: AgentStream, sent: dict[tuple[str, int], set[pb.Database]]) -> None:
        while True:
            reply = await stream.receive(within=600)
            if reply is None:
                return
            if reply.WhichOneof("body") != "ack":
                continue
            ack = reply.ack
            self.settle(ack)
            key = (ack.epoch, ack.seq)
            awaited = sent.get(key)
            if awaited is not None:
                # Every database answers each send once; then the batch may be sent again if still owed.
                awaited.difference_update(awaited if ack.database == pb.DATABASE_UNSPECIFIED else {ack.database})
                if not awaited:
                    del sent[key]
