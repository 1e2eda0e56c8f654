"""Hypothesis-driven hostile input against a real `opsmgr server` process: raw bytes before TLS and hostile gRPC
payloads over mTLS on the agent port, raw bytes and hostile Enroll requests on the enrollment endpoint.

Hypothesis runs in a worker thread and hands each example (a chunk of inputs) to the event loop, which sends it over
real sockets while good traffic keeps flowing next to it (an agent committing batches, agents enrolling). The total
number of inputs across this file is OPSMGR_FUZZ_INPUTS (default 100,000); derandomized, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import random
import re
import ssl
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from opsmgr.pki import build_csr, generate_private_key
from opsmgr.pki.keys import PrivateKey
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol import enrollment_pb2 as pb_enroll
from opsmgr.protocol.enrollment import METHOD as ENROLL_METHOD
from opsmgr.protocol.enrollment import tokens_secret_name
from opsmgr.protocol.limits import (
    MAX_BATCH_ITEMS,
    MAX_DISCOVERY_PROPERTIES,
    MAX_KEY_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_STRING_CHARS,
    MAX_TASK_OUTPUT_BYTES,
)
from opsmgr.protocol.transport import GRPC_RECEIVE_LIMIT
from opsmgr.protocol.versions import MAX_VERSION, MIN_VERSION
from opsmgr.server.enrollment import MAX_CSR_BYTES, MAX_TOKEN_CHARS
from opsmgr.server.enrollment_tokens import JoinTokenRecord
from tests.integration.api.conftest import opsmgr_crds  # noqa: F401 - the enrollment fixture needs it
from tests.integration.enrollment.conftest import FOREIGN_SIGNER_TOKEN, GROUP, Enrollment, enrollment  # noqa: F401
from tests.integration.server.client import NO_PROXY, AgentStream, Credentials, channel
from tests.integration.server.conftest import AGENTS, Pki, ServerProcess

INPUTS = int(os.environ.get("OPSMGR_FUZZ_INPUTS", "100000"))
# Per example on the agent port: most inputs go through one long-lived stream; the few that close a stream, and the
# raw connections, each need a connection of their own (a fresh TLS handshake is the costliest input by far).
LONG_LIVED, CLOSING, RAW = 57, 1, 2
AGENT_EXAMPLES = max(1, INPUTS * 97 // 100 // (LONG_LIVED + CLOSING + RAW))
# Per example on the enrollment endpoint: hostile Enroll requests (sent together) and raw connections. Every refusal
# there costs API-server reads and writes a Kubernetes Event, so it gets the remaining ~3% (3,040 of 100,000).
ENROLL_REQUESTS, ENROLL_RAW = 8, 2
ENROLL_EXAMPLES = max(1, (INPUTS - AGENT_EXAMPLES * (LONG_LIVED + CLOSING + RAW)) // (ENROLL_REQUESTS + ENROLL_RAW))
# The server is a Python process whose allocator keeps freed arenas; a leak per input (100,000 of them) would still
# show as hundreds of MiB, while 64 MiB absorbs arena growth, gRPC buffers and the database pools warming up.
RSS_GROWTH_BOUND = 64 * 1024 * 1024
HOSTILE = AGENTS[0]  # the long-lived hostile stream's certificate
CLOSER = AGENTS[1]  # the certificate of the streams that get closed
GOOD = AGENTS[2]
CHECKPOINTS = 10


def fuzz_settings(examples: int) -> settings:
    # Generation only: a failure is seen by the event loop, not raised in the example, so shrinking has nothing to do.
    return settings(max_examples=max(1, examples), derandomize=True, database=None, deadline=None,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)


# ------------------------------------------------------------------ values

# Hypothesis draws the structure of each input (kinds, poisons, item kinds) and a seed; the seed expands into hostile
# field values through a local Random. Drawing every field through hypothesis costs ~75 ms per 30 inputs, far too
# slow for 100,000 inputs on 2 cores; seed and serial number keep each input repeatable in a derandomized run.
UINT64_EDGES = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
INT64_EDGES = [0, -1, 1, -(2**63), 2**63 - 1, -(2**31) - 1, 2**31]
INT32_EDGES = [0, -1, 1, 5, 6, -(2**31), 2**31 - 1, 254, 255, 256]
UINT32_EDGES = [0, 1, 2, 3, 5, 6, 254, 255, 256, 2**31, 2**32 - 1]
NASTY = ["", " ", ".", "\x00", "a\x00b", "é" * 40, "../../etc/passwd", "' OR 1=1 --", "%s%n%x", "\u202e\ufeff",
         "web02.contoso.test", "WEB01.CONTOSO.TEST.", "\r\nSet-Cookie: x", "{{7*7}}", "🙂" * 8]
ALPHABET = "abcXYZ019.-_:/ é\u00ff\u4e2d\U0001f642\t\n\x7f"


# Mixed into every seed: hypothesis draws small seeds (0 above all) again and again, so 2,400 seeds held ~370 distinct.
SERIAL = itertools.count()


class Values:
    """Hostile field values from one seed: edge numbers, nasty strings, huge strings, absurd times."""

    def __init__(self, seed: int) -> None:
        # A local generator: repeatable in a derandomized run, and not the global one hypothesis guards.
        self.rng = random.Random(f"{seed}:{next(SERIAL)}")

    def pick(self, edges: list[int], low: int, high: int) -> int:
        return self.rng.choice(edges) if self.rng.random() < 0.5 else self.rng.randint(low, high)

    def uint64(self) -> int:
        return self.pick(UINT64_EDGES, 0, 2**64 - 1)

    def int64(self) -> int:
        return self.pick(INT64_EDGES, -(2**63), 2**63 - 1)

    def int32(self) -> int:
        return self.pick(INT32_EDGES, -(2**31), 2**31 - 1)

    def uint32(self) -> int:
        return self.pick(UINT32_EDGES, 0, 2**32 - 1)

    def text(self) -> str:
        roll = self.rng.random()
        if roll < 0.01:  # huge: over each limit the server enforces, and far beyond
            return self.rng.choice("xé\x00") * self.rng.choice([MAX_KEY_CHARS + 1, MAX_STRING_CHARS + 1, 200_000])
        if roll < 0.2:
            return self.rng.choice(NASTY)
        return "".join(self.rng.choices(ALPHABET, k=self.rng.randint(0, 12)))

    def binary(self, most: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, most))

    def timestamp(self) -> Timestamp | None:
        roll = self.rng.random()
        if roll < 0.1:
            return None
        if roll < 0.3:
            return Timestamp(seconds=self.int64(), nanos=self.int32())
        return Timestamp(seconds=int(datetime.now(UTC).timestamp()) - self.rng.randint(-86_400 * 3, 86_400 * 500),
                         nanos=self.rng.randint(0, 999_999_999))

    def item(self, kind: str) -> pb.Item:
        t = self.text
        if kind == "event":
            return pb.Item(event=stamped(pb.Event(object_key=t(), channel=t(), source=t(), number=self.int64(),
                                                  level=self.uint32(), description=t()), "logged_at", self.timestamp()))
        if kind == "performance":
            value = self.rng.choice([math.nan, math.inf, -math.inf, -0.0, 1e308, self.rng.uniform(-1e9, 1e9)])
            return pb.Item(performance=stamped(pb.PerformanceSample(
                object_key=t(), object_name=t(), counter_name=t(), instance_name=t(), value=value),
                "sampled_at", self.timestamp()))
        if kind == "state":
            return pb.Item(state=stamped(pb.StateChange(object_key=t(), monitor=t(), old_state=self.uint32(),
                                                        new_state=self.uint32()), "changed_at", self.timestamp()))
        if kind == "alert":
            return pb.Item(alert=stamped(pb.Alert(object_key=t(), source=t(), name=t(), description=t(),
                                                  severity=self.uint32(), priority=self.uint32(),
                                                  resolution_state=self.uint32()), "raised_at", self.timestamp()))
        if kind == "discovery":
            properties = {t(): t() for _ in range(self.rng.randint(0, 3))}
            return pb.Item(discovery=stamped(pb.DiscoveryItem(object_key=t(), class_name=t(), display_name=t(),
                                                              properties=properties),
                                             "discovered_at", self.timestamp()))
        return pb.Item()  # a wrong oneof: no kind at all

    def queue_status(self) -> pb.QueueStatus:
        return pb.QueueStatus(depth_items=self.uint64(), size_bytes=self.uint64(), limit_bytes=self.uint64(),
                              evicted_items_total=self.uint64(),
                              evicted_by_kind={self.text(): self.uint64() for _ in range(self.rng.randint(0, 3))})


def stamped(message: Any, name: str, moment: Timestamp | None) -> Any:
    if moment is not None:
        getattr(message, name).CopyFrom(moment)
    return message


def now_stamp() -> Timestamp:
    return Timestamp(seconds=int(datetime.now(UTC).timestamp()))


def wire(value: int) -> Any:
    """An enum field's raw number: proto3 enums are open, so any int32 goes on the wire."""
    return value


def event_at_now(**fields: Any) -> pb.Item:
    values: dict[str, Any] = {"logged_at": now_stamp(), "object_key": "k", "level": 3, **fields}
    return pb.Item(event=pb.Event(**values))


# Each poison alone makes a batch invalid whatever the rest holds, so every hostile batch must come back REJECTED.
POISONS = ["epoch not a UUID", "lane out of range", "seq beyond bigint", "item without kind", "NUL in a key",
           "text over the limit", "event number beyond int32", "level not a level", "time unset",
           "time unrepresentable", "alert in the bulk lane", "too many items", "a database that does not exist",
           "too many discovery properties"]


def poison(values: Values, batch: pb.DataBatch, name: str) -> None:
    rng = values.rng
    if name == "epoch not a UUID":
        batch.epoch = "x-" + values.text()
    elif name == "lane out of range":
        batch.lane = wire(rng.choice([0, 3, -1, 2**31 - 1, -(2**31)]))
    elif name == "seq beyond bigint":
        batch.seq = rng.randint(2**63, 2**64 - 1)
    elif name == "item without kind":
        batch.items.append(pb.Item())
    elif name == "NUL in a key":
        batch.items.append(event_at_now(channel="c\x00" + values.text()))
    elif name == "text over the limit":
        batch.items.append(event_at_now(description="d" * (MAX_STRING_CHARS + 1)))
    elif name == "event number beyond int32":
        batch.items.append(event_at_now(number=rng.choice([rng.randint(2**31, 2**63 - 1),
                                                           rng.randint(-(2**63), -(2**31) - 1)])))
    elif name == "level not a level":
        batch.items.append(event_at_now(level=rng.choice([0, 6, 2**32 - 1])))
    elif name == "time unset":
        batch.items.append(pb.Item(event=pb.Event(object_key="k", level=3)))
    elif name == "time unrepresentable":
        seconds = rng.choice([10**12, -(10**12), 2**63 - 1, -(2**63)])
        batch.items.append(pb.Item(event=pb.Event(logged_at=Timestamp(seconds=seconds), object_key="k", level=3)))
    elif name == "alert in the bulk lane":
        batch.lane = pb.LANE_BULK
        batch.items.append(pb.Item(alert=pb.Alert(raised_at=now_stamp(), object_key="k", source="s", name="n",
                                                  severity=2, priority=1)))
    elif name == "too many items":
        batch.items.extend([pb.Item()] * (MAX_BATCH_ITEMS + 1))
    elif name == "a database that does not exist":
        batch.databases.append(wire(rng.choice([3, -1, 2**31 - 1])))
    else:
        batch.items.append(pb.Item(discovery=pb.DiscoveryItem(
            discovered_at=now_stamp(), object_key="k", class_name="c",
            properties={str(n): "v" for n in range(MAX_DISCOVERY_PROPERTIES + 1)})))


ITEM_KINDS = ["event", "performance", "state", "alert", "discovery", "none"]
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def hostile_batch(draw: st.DrawFn) -> pb.AgentMessage:
    values = Values(draw(SEEDS))
    rng = values.rng
    kinds = draw(st.lists(st.sampled_from(ITEM_KINDS), max_size=3))
    batch = pb.DataBatch(epoch=rng.choice([str(uuid.uuid4()), values.text()]), seq=values.uint64(),
                         lane=wire(rng.choice([pb.LANE_PRIORITY, pb.LANE_BULK, 0, 7])),
                         items=[values.item(kind) for kind in kinds])
    if rng.random() < 0.25:
        batch.databases.extend([wire(rng.choice([0, 1, 2, 9])) for _ in range(rng.randint(0, 3))])
    for name in draw(st.lists(st.sampled_from(POISONS), min_size=1, max_size=2, unique=True)):
        poison(values, batch, name)
    if rng.random() < 0.002:  # over our 4 MiB limit, under gRPC's: refused by the session with a reason
        batch.items.extend([pb.Item(event=pb.Event(description="x" * 30_000))] * (MAX_MESSAGE_BYTES // 30_000 + 2))
    return pb.AgentMessage(batch=batch)


@st.composite
def hostile_other(draw: st.DrawFn) -> pb.AgentMessage:
    """Messages the stream takes without a reply: heartbeats, task results, renewals, an empty body."""
    kind = draw(st.sampled_from(["heartbeat", "task_result", "renewal_request", "empty"]))
    values = Values(draw(SEEDS))
    if kind == "heartbeat":
        return pb.AgentMessage(heartbeat=stamped(pb.Heartbeat(seq=values.uint64(), queue=values.queue_status()),
                                                 "sent_at", values.timestamp()))
    if kind == "task_result":
        output = values.rng.choice([values.binary(32), b"o" * (MAX_TASK_OUTPUT_BYTES * 4)])
        return pb.AgentMessage(task_result=pb.TaskResult(
            task_id=values.text(), status=wire(values.int32()), exit_code=values.int32(), output=output,
            output_truncated=values.rng.random() < 0.5, message=values.text()))
    if kind == "renewal_request":
        csr = values.rng.choice([values.binary(64), b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 70_000])
        return pb.AgentMessage(renewal_request=pb.RenewalRequest(csr_pem=csr))
    return pb.AgentMessage()


LONG_LIVED_MESSAGE = st.one_of(hostile_batch(), hostile_batch(), hostile_batch(), hostile_other())


@dataclass(frozen=True)
class Closing:
    """Input for a fresh stream: messages sent in order; the server must end the stream, unless `acceptable` (a
    Hello that happens to be a good one, which the server rightly welcomes)."""

    kind: str
    messages: tuple[bytes, ...]
    acceptable: bool = False


def hello(**fields: Any) -> bytes:
    values = {"min_version": MIN_VERSION, "max_version": MAX_VERSION, "agent_version": "fuzz", **fields}
    return pb.AgentMessage(hello=pb.Hello(**values)).SerializeToString()


def welcomed(low: int, high: int, claim: str) -> bool:
    """Would the server accept this Hello from CLOSER's certificate? (1 <= low <= high, overlapping ours; own name)"""
    speaks = 1 <= low <= high and high >= MIN_VERSION and low <= MAX_VERSION
    return speaks and (claim == "" or claim.strip().lower().removesuffix(".") == CLOSER)


CLOSING_KINDS = ["random bytes first", "random bytes after Hello", "repeated Hello", "no Hello first",
                 "hostile Hello", "goodbye", "wrong wire type"]


@st.composite
def closing_input(draw: st.DrawFn) -> Closing:  # noqa: PLR0911 - one return per kind
    # A message over gRPC's receive limit costs 8 MiB of TLS traffic: a few hundred in a run are plenty.
    kind = "over gRPC's limit" if draw(st.integers(0, 199)) == 137 else draw(st.sampled_from(CLOSING_KINDS))
    if kind == "random bytes first":
        return Closing(kind, (draw(st.binary(min_size=1, max_size=256)),))
    # Bytes after a Hello may still decode (as unknown fields of an empty message), which the stream rightly takes:
    # a second Hello then ends it for certain.
    if kind == "random bytes after Hello":
        return Closing(kind, (hello(), b"\xff" + draw(st.binary(max_size=256)), hello()))
    if kind == "repeated Hello":
        return Closing(kind, (hello(), hello(agent=draw(st.sampled_from(["", CLOSER, AGENTS[0]])))))
    if kind == "no Hello first":
        return Closing(kind, (draw(st.one_of(hostile_batch(), hostile_other())).SerializeToString(),))
    if kind == "hostile Hello":
        values = Values(draw(SEEDS))
        low, high = values.uint32(), values.uint32()
        claim = values.rng.choice([values.text(), AGENTS[0], AGENTS[3], "stranger.contoso.test", CLOSER])
        message = hello(min_version=low, max_version=high, agent=claim, epoch=values.text(),
                        placement=values.text(), queue=values.queue_status())
        return Closing(kind, (message,), acceptable=welcomed(low, high, claim))
    if kind == "goodbye":
        reason = Values(draw(SEEDS)).text()
        return Closing(kind, (hello(), pb.AgentMessage(goodbye=pb.Goodbye(reason=reason)).SerializeToString()))
    if kind == "wrong wire type":
        # Field 3 (batch) sent as a varint instead of a length-delimited message.
        return Closing(kind, (hello(), bytes([0x18]) + draw(st.binary(min_size=1, max_size=9)), hello()))
    return Closing(kind, (hello(), b"\x1a" + b"\x00" * (GRPC_RECEIVE_LIMIT + 16)))


def client_hellos() -> list[bytes]:
    """Real TLS ClientHello records (TLS 1.2 and 1.3, with ALPN h2), to truncate and corrupt."""
    records = []
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = version
        context.set_alpn_protocols(["h2"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="ms.opsmgr.svc")
        with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello we never give it
            tls.do_handshake()
        records.append(outgoing.read())
    return records


CLIENT_HELLOS = client_hellos()
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@st.composite
def raw_input(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["garbage", "truncated ClientHello", "corrupted ClientHello", "plaintext HTTP/2",
                                 "empty"]))
    if kind == "garbage":
        return kind, draw(st.binary(min_size=1, max_size=512))
    hello_record = draw(st.sampled_from(CLIENT_HELLOS))
    if kind == "truncated ClientHello":
        return kind, hello_record[:draw(st.integers(1, len(hello_record) - 1))]
    if kind == "corrupted ClientHello":
        corrupted = bytearray(hello_record)
        for _ in range(draw(st.integers(1, 4))):
            corrupted[draw(st.integers(0, len(corrupted) - 1))] = draw(st.integers(0, 255))
        return kind, bytes(corrupted) + draw(st.binary(max_size=16))
    if kind == "plaintext HTTP/2":
        return kind, HTTP2_PREFACE + draw(st.binary(max_size=64))
    return kind, b""


# ------------------------------------------------------------------ the run


@dataclass
class Figures:
    inputs: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    def lines(self, title: str, **more: object) -> list[str]:
        lines = [f"{title}: {sum(self.inputs.values())} inputs"]
        lines += [f"  input   {kind}: {count}" for kind, count in sorted(self.inputs.items())]
        lines += [f"  outcome {kind}: {count}" for kind, count in sorted(self.outcomes.items())]
        lines += [f"  {name}: {value}" for name, value in more.items()]
        return lines


@contextlib.contextmanager
def server_log_on_failure(server: ServerProcess) -> Iterator[None]:
    """A failure carries the server's last log lines: what the server said when it went wrong is read first."""
    try:
        yield
    except BaseException as error:
        error.add_note(f"server log, last lines:\n{server.log_tail(60)}")
        raise


def log_levels(server: ServerProcess) -> Counter[str]:
    """The server's log lines per level; an unhandled exception in a handler shows as an error line."""
    return Counter(str(line.get("level")) for line in server.log_lines())


async def raw_connection(port: int, payload: bytes, figures: Figures, kind: str) -> None:
    """Bytes on a fresh TCP connection before any TLS; the server must close it (we half-close first)."""
    figures.inputs[f"raw: {kind}"] += 1
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass
        figures.outcomes["raw: closed by the server"] += 1
    except ConnectionError:  # reset, or a broken pipe when the server closed before we finished writing
        figures.outcomes["raw: reset by the server"] += 1
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def fuzz_in_thread(strategy: st.SearchStrategy[Any], examples: int,
                         on_example: Callable[[int, Any], Coroutine[Any, Any, None]]) -> None:
    """Run hypothesis in a worker thread; each example is handled on this event loop before the next is drawn."""
    loop = asyncio.get_running_loop()
    counter = iter(range(examples * 10))

    @fuzz_settings(examples)
    @given(strategy)
    def drive(example: Any) -> None:
        asyncio.run_coroutine_threadsafe(on_example(next(counter), example), loop).result(timeout=300)

    await asyncio.to_thread(drive)


@dataclass
class GoodAgent:
    """A well-behaved agent in a closed loop: one batch, wait for both databases' acks, again."""

    port: int
    credentials: Credentials
    committed: int = 0
    other: Counter[str] = field(default_factory=Counter)

    async def run(self, stop: asyncio.Event) -> None:
        epoch = str(uuid.uuid4())
        async with channel(self.port, self.credentials) as chan:
            stream = AgentStream(chan)
            await stream.hello(epoch=epoch)
            seq = 0
            while not stop.is_set():
                # Built without `random`: hypothesis, drawing in the other thread, warns about any use of it.
                items = [event_at_now(object_key=f"good:{epoch}:{seq}:{n}", description="ok") for n in range(2)]
                await stream.send(pb.AgentMessage(batch=pb.DataBatch(epoch=epoch, seq=seq, lane=pb.LANE_BULK,
                                                                     items=items)))
                seq += 1
                await asyncio.sleep(0.05)  # a real agent's pace; the point is that it keeps flowing, not its rate
                for ack in await stream.acks_until(2, within=120):
                    if ack.outcome == pb.Ack.OUTCOME_COMMITTED:
                        self.committed += 1
                    else:
                        self.other[pb.Ack.Outcome.Name(ack.outcome)] += 1
            await stream.call.done_writing()


@dataclass
class Watch:
    """Checks at every tenth of the run: the process lives, answers /healthz, and the good agent progressed."""

    server: ServerProcess
    good: GoodAgent | None
    good_task: asyncio.Task[None] | None = None
    rss_warm: int = 0
    last_committed: int = -1
    health: list[str] = field(default_factory=list)

    async def checkpoint(self) -> None:
        assert self.server.process is not None and self.server.process.poll() is None, "the server exited"
        health = await asyncio.to_thread(self.server.healthz)
        assert health is not None, "the server stopped answering /healthz"
        self.health.append(str(health.get("status")))
        if self.good is not None:
            async with asyncio.timeout(60):  # eventually: the good agent's next ack arrives
                while True:
                    if self.good.committed > self.last_committed:
                        break
                    if self.good_task is not None and self.good_task.done():
                        self.good_task.result()  # the good agent's stream ended: raise why
                        raise AssertionError("the good agent stopped")
                    await asyncio.sleep(0.05)
            self.last_committed = self.good.committed
        if len(self.health) == 2:  # after the first tenth of the inputs: every kind of input has been through
            self.rss_warm = self.server.rss_bytes()


@pytest.mark.timeout(900)  # 97,000 inputs on 2 cores: minutes, not the tier's 5-minute default
async def test_hostile_bytes_and_payloads_never_stop_the_server_nor_a_good_agent(
        running_server: ServerProcess, pki: Pki, figures: Callable[[Sequence[str]], None]) -> None:
    server = running_server
    port = server.agent_port
    examples = AGENT_EXAMPLES
    counted = Figures()
    rejected = Counter[str]()
    good = GoodAgent(port, pki.agent(GOOD))
    watch = Watch(server, good)
    stop = asyncio.Event()
    good_task = watch.good_task = asyncio.create_task(good.run(stop))
    batches_sent = 0
    try:
        with server_log_on_failure(server):
            async with channel(port, pki.agent(HOSTILE)) as hostile_channel:
                hostile = AgentStream(hostile_channel)
                await hostile.hello()

                async def read_hostile_acks() -> None:
                    while (reply := await hostile.receive(within=600)) is not None:
                        kind = reply.WhichOneof("body")
                        if kind == "renewal":  # a hostile CSR is answered, and must be refused, never signed
                            refused = reply.renewal.refused_reason
                            rejected[f"renewal refused: {refused}" if refused else "renewal ISSUED"] += 1
                        else:
                            rejected[pb.Ack.Outcome.Name(reply.ack.outcome) if kind == "ack" else str(kind)] += 1

                reader = asyncio.create_task(read_hostile_acks())
                closer = pki.agent(CLOSER)

                async def one_closing(bad: Closing) -> None:
                    counted.inputs[f"closing: {bad.kind}"] += 1
                    async with aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(
                            root_certificates=closer.ca_pem, private_key=closer.key_pem,
                            certificate_chain=closer.certificate_pem),
                            options=[("grpc.ssl_target_name_override", "ms.opsmgr.svc"), NO_PROXY,
                                     ("grpc.max_send_message_length", -1)]) as chan:
                        stream = AgentStream(chan)
                        try:
                            for message in bad.messages:
                                await stream.send(message)
                            if bad.acceptable:
                                reply = await stream.receive(within=60)
                                assert reply is not None and reply.WhichOneof("body") == "welcome", reply
                                await stream.call.done_writing()
                            async with asyncio.timeout(60):  # eventually the server ends it: we never half-close
                                while (reply := await stream.receive(within=60)) is not None:
                                    assert reply.WhichOneof("body") in ("welcome", "ack"), reply
                            code, details = await stream.status()
                        except aio.AioRpcError as error:
                            code, details = error.code(), error.details() or ""
                        # INTERNAL comes from our own gRPC core, when a write races the server ending the stream.
                        said = f" ({details})" if code is grpc.StatusCode.INTERNAL else ""
                        welcomed = "welcomed, then " if bad.acceptable else ""
                        counted.outcomes[f"closing: {bad.kind}: {welcomed}{code.name}{said}"] += 1
                        if bad.kind != "goodbye" and not bad.acceptable:
                            assert code is not grpc.StatusCode.OK, f"{bad.kind} ended without an error: {bad!r}"
                        assert code is not grpc.StatusCode.UNKNOWN, f"{bad.kind}: an unhandled error: {details}"

                async def on_example(index: int, example: tuple[list[pb.AgentMessage], list[Closing],
                                                                list[tuple[str, bytes]]]) -> None:
                    nonlocal batches_sent
                    if index % max(1, examples // CHECKPOINTS) == 0:
                        await watch.checkpoint()
                    messages, closings, raws = example
                    raw_tasks = [asyncio.create_task(raw_connection(port, payload, counted, kind))
                                 for kind, payload in raws]
                    for message in messages:
                        body = message.WhichOneof("body") or "empty"
                        counted.inputs[f"long-lived: {body}"] += 1
                        batches_sent += body == "batch"
                        await hostile.send(message)
                    for bad in closings:
                        await one_closing(bad)
                    await asyncio.gather(*raw_tasks)

                chunk = st.tuples(st.lists(LONG_LIVED_MESSAGE, min_size=LONG_LIVED, max_size=LONG_LIVED),
                                  st.lists(closing_input(), min_size=CLOSING, max_size=CLOSING),
                                  st.lists(raw_input(), min_size=RAW, max_size=RAW))
                await fuzz_in_thread(chunk, examples, on_example)

                async with asyncio.timeout(120):  # eventually every hostile batch has its verdict
                    while True:
                        settled = rejected["OUTCOME_REJECTED"] + rejected["OUTCOME_COMMITTED"]
                        if settled >= batches_sent or reader.done():
                            break
                        await asyncio.sleep(0.1)
                assert not reader.done(), "the long-lived hostile stream was closed"
                await hostile.call.done_writing()
                async with asyncio.timeout(60):
                    await reader

            await watch.checkpoint()
            stop.set()
            async with asyncio.timeout(120):
                await good_task
            rss_after = server.rss_bytes()
            levels = log_levels(server)
            figures(counted.lines(
                "agent port", **{"long-lived replies": dict(rejected), "hostile batches sent": batches_sent,
                                 "good agent acks committed": good.committed,
                                 "good agent other acks": dict(good.other), "healthz": dict(Counter(watch.health)),
                                 "server log lines per level": dict(levels),
                                 "RSS after warm-up MiB": watch.rss_warm >> 20,
                                 "RSS after the run MiB": rss_after >> 20}))
            assert sum(counted.inputs.values()) == examples * (LONG_LIVED + CLOSING + RAW)
            assert rejected["OUTCOME_REJECTED"] == batches_sent, "every hostile batch is rejected, none committed"
            assert {reply for reply in rejected if not reply.startswith("renewal refused: ")} <= {"OUTCOME_REJECTED"}
            assert good.committed >= 2 * CHECKPOINTS and not good.other
            assert rss_after - watch.rss_warm < RSS_GROWTH_BOUND
            assert server.process is not None and server.process.poll() is None
            assert not levels["error"] and not levels["critical"], "the server logged an error"
    finally:
        good_task.cancel()  # a no-op after a clean stop; after a failure, it must not keep the test waiting
        await asyncio.gather(good_task, return_exceptions=True)


# ------------------------------------------------------------------ the enrollment endpoint

ISSUABLE_FQDN = "web09.contoso.test"  # the FQDN the hostile CSRs ask for
STRANGER = "stranger.contoso.test"
CSR_PEM_HEADER = b"-----BEGIN CERTIFICATE REQUEST-----\n"
JWT_SHAPED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpkZWZhdWx0In0."


def good_fqdn(number: int) -> str:
    return f"good{number}.contoso.test"


def csr_asking(key: PrivateKey, cn: str, *, extension: x509.ExtensionType | None = None) -> bytes:
    """A well-signed CSR for `cn`, optionally asking for one extension an agent may not have."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                                 cn)]))
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)


def hostile_csrs(ca_pem: bytes) -> tuple[dict[str, bytes], dict[bytes, str]]:
    """CSRs nobody may have by name, and well-formed CSRs of a hostile key with the FQDN each asks for."""
    key = generate_private_key()
    valid = build_csr(key, ISSUABLE_FQDN).public_bytes(Encoding.DER)
    bad_signature = bytearray(valid)
    bad_signature[-1] ^= 0x01  # the signature is last in the DER: the request parses, its signature is wrong
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    never = {
        "a certificate, not a CSR": ca_pem,
        "PEM armour around junk": CSR_PEM_HEADER + b"MIIB" * 40 + b"\n-----END CERTIFICATE REQUEST-----\n",
        "over the CSR limit": CSR_PEM_HEADER + b"A" * (MAX_CSR_BYTES + 1),
        "a bad signature": bytes(bad_signature),
        "a foreign CN": build_csr(key, STRANGER).public_bytes(Encoding.PEM),
        "CA:TRUE": csr_asking(key, ISSUABLE_FQDN, extension=x509.BasicConstraints(ca=True, path_length=None)),
        "keyCertSign": csr_asking(key, ISSUABLE_FQDN, extension=usage),
        "serverAuth": csr_asking(key, ISSUABLE_FQDN,
                                 extension=x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
        "a SAN of another host": csr_asking(key, ISSUABLE_FQDN, extension=x509.SubjectAlternativeName(
            [x509.DNSName(ISSUABLE_FQDN), x509.DNSName(AGENTS[0])])),
    }
    issuable = {build_csr(key, ISSUABLE_FQDN).public_bytes(Encoding.PEM): ISSUABLE_FQDN, valid: ISSUABLE_FQDN,
                build_csr(key, good_fqdn(0)).public_bytes(Encoding.PEM): good_fqdn(0)}
    return never, issuable


@dataclass(frozen=True)
class EnrollInput:
    kind: str
    payload: bytes  # what goes on the wire as the request message


ENROLL_KINDS = ["undecodable", "empty", "no proof", "join token", "the group's token", "service account token"]


def hostile_enroll_input(token: str, never: dict[str, bytes], issuable: dict[bytes, str]) -> st.SearchStrategy[
        EnrollInput]:
    """Hostile Enroll requests. The group's real token only ever comes with a CSR it must not be used for."""
    token_id = token.split(".", maxsplit=1)[0]

    @st.composite
    def strategy(draw: st.DrawFn) -> EnrollInput:
        # A request over gRPC's receive limit costs 8 MiB of TLS traffic: a few in a run are plenty.
        kind = "over gRPC's limit" if draw(st.integers(0, 199)) == 137 else draw(st.sampled_from(ENROLL_KINDS))
        values = Values(draw(SEEDS))
        rng = values.rng
        if kind == "over gRPC's limit":
            return EnrollInput(kind, pb_enroll.EnrollRequest(csr_pem=b"\x00" * (GRPC_RECEIVE_LIMIT + 16))
                               .SerializeToString())
        if kind == "undecodable":
            # A first byte with wire type 7, which no protobuf message has.
            return EnrollInput(kind, b"\xff" + draw(st.binary(max_size=256)))
        if kind == "empty":
            return EnrollInput(kind, b"")
        csr = rng.choice([values.binary(600), *never.values(), *issuable])
        fqdn = rng.choice([values.text(), ISSUABLE_FQDN, good_fqdn(0), STRANGER, AGENTS[0], "x" * 300 + ".test"])
        if csr in issuable and rng.random() < 0.7:  # a CSR that passes validation: the proof is what gets judged
            fqdn = issuable[csr]
        request = pb_enroll.EnrollRequest(csr_pem=csr, fqdn=fqdn, agent_version=values.text())
        if kind == "join token":
            request.join_token = rng.choice([
                values.text(), f"{token_id}.{'a' * 32}", "abcdefgh." + "b" * 32, token + "x", token[:-1],
                "t" * (MAX_TOKEN_CHARS + 1), f"{token_id}.{values.text()}"])
        elif kind == "the group's token":
            # With the real token the CSR is one nobody may have, or one for another FQDN than the request names.
            request.join_token = token
            request.csr_pem = rng.choice(list(never.values()))
            request.fqdn = ISSUABLE_FQDN if rng.random() < 0.5 else rng.choice([values.text(), AGENTS[0], STRANGER])
            if request.csr_pem == never["a foreign CN"] and request.fqdn == STRANGER:
                request.fqdn = ISSUABLE_FQDN
        elif kind == "service account token":
            request.service_account_token = rng.choice([values.text(), FOREIGN_SIGNER_TOKEN, JWT_SHAPED,
                                                        "s" * (MAX_TOKEN_CHARS + 1), token])
        return EnrollInput(kind, request.SerializeToString())

    return strategy()


REASON = re.compile(r"[A-Z][A-Za-z0-9]+")


@dataclass
class GoodEnrollments:
    """Real agents enrolling with the group's token now and then, next to the hostile requests."""

    token: str
    issued: list[str] = field(default_factory=list)

    async def one(self, stub: aio.UnaryUnaryMultiCallable[bytes, pb_enroll.EnrollReply]) -> None:
        fqdn = good_fqdn(len(self.issued))
        csr = build_csr(generate_private_key(), fqdn).public_bytes(Encoding.PEM)
        request = pb_enroll.EnrollRequest(join_token=self.token, fqdn=fqdn, csr_pem=csr, agent_version="good")
        reply = await stub(request.SerializeToString(), timeout=60)
        assert reply.outcome == pb_enroll.EnrollReply.ISSUED, f"a good enrollment was not issued: {reply}"
        certificate = x509.load_pem_x509_certificate(reply.certificate_pem)
        assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == fqdn
        self.issued.append(fqdn)


@pytest.mark.timeout(600)  # a control plane to start, then ~3,000 requests that each write an Event
async def test_hostile_bytes_and_requests_never_stop_the_enrollment_endpoint_nor_a_good_enrollment(
        enrollment: Enrollment, figures: Callable[[Sequence[str]], None]) -> None:  # noqa: F811 - the fixture
    server, port = enrollment.server, enrollment.enrollment_port
    # AutoApprove, the most generous policy: a hostile request that got past any check would be issued at once.
    enrollment.set_policy("AutoApprove")
    good = GoodEnrollments(enrollment.create_token())
    never, issuable = hostile_csrs(enrollment.ca.certificate_pem())
    counted = Figures()
    health: list[str] = []
    rss_warm = 0
    with server_log_on_failure(server):
        async with aio.secure_channel(
                f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_certificates=enrollment.ca_file.read_bytes()),
                options=[("grpc.ssl_target_name_override", enrollment.server_name), NO_PROXY,
                         ("grpc.max_send_message_length", -1)]) as chan:
            stub = chan.unary_unary(ENROLL_METHOD, request_serializer=None,
                                    response_deserializer=pb_enroll.EnrollReply.FromString)

            async def one_hostile(bad: EnrollInput) -> None:
                counted.inputs[f"request: {bad.kind}"] += 1
                try:
                    reply = await stub(bad.payload, timeout=120)
                except aio.AioRpcError as error:
                    counted.outcomes[f"request: {bad.kind}: {error.code().name}"] += 1
                    expected = grpc.StatusCode.RESOURCE_EXHAUSTED if bad.kind == "over gRPC's limit" else \
                        grpc.StatusCode.INVALID_ARGUMENT
                    assert bad.kind in ("undecodable", "over gRPC's limit") and error.code() == expected, \
                        f"{bad.kind}: {error.code().name} {error.details()}: {bad.payload[:300]!r}"
                    return
                counted.outcomes[f"request: {bad.kind}: {pb_enroll.EnrollReply.Outcome.Name(reply.outcome)} "
                                 f"{reply.reason}"] += 1
                assert reply.outcome == pb_enroll.EnrollReply.REFUSED, f"{bad.kind}: {reply}: {bad.payload[:300]!r}"
                assert REASON.fullmatch(reply.reason) and reply.message, reply
                assert not reply.certificate_pem and not reply.trust_bundle_pem

            async def checkpoint() -> None:
                nonlocal rss_warm
                assert server.process is not None and server.process.poll() is None, "the server exited"
                answer = await asyncio.to_thread(server.healthz)
                assert answer is not None, "the server stopped answering /healthz"
                health.append(str(answer.get("status")))
                await good.one(stub)
                if len(health) == 2:
                    rss_warm = server.rss_bytes()

            async def on_example(index: int, example: tuple[list[EnrollInput], list[tuple[str, bytes]]]) -> None:
                if index % max(1, ENROLL_EXAMPLES // CHECKPOINTS) == 0:
                    await checkpoint()
                requests, raws = example
                await asyncio.gather(*(one_hostile(bad) for bad in requests),
                                     *(raw_connection(port, payload, counted, kind) for kind, payload in raws))

            chunk = st.tuples(st.lists(hostile_enroll_input(good.token, never, issuable), min_size=ENROLL_REQUESTS,
                                       max_size=ENROLL_REQUESTS),
                              st.lists(raw_input(), min_size=ENROLL_RAW, max_size=ENROLL_RAW))
            await fuzz_in_thread(chunk, ENROLL_EXAMPLES, on_example)
            await checkpoint()  # afterwards, a good enrollment still succeeds

        rss_after = server.rss_bytes()
        levels = log_levels(server)
        agents = {item["metadata"]["name"]
                  for item in json.loads(enrollment.kubectl.run("get", "agents", "-o", "json")[1])["items"]}
        secret = json.loads(enrollment.kubectl.run("get", "secret", tokens_secret_name(GROUP), "-o", "json")[1])
        token_id = good.token.split(".", maxsplit=1)[0]
        uses = JoinTokenRecord.from_json(token_id, base64.b64decode(secret["data"][token_id])).uses
        figures(counted.lines(
            "enrollment endpoint", **{"good enrollments issued": len(good.issued), "join token uses": uses,
                                      "Agents": len(agents), "healthz": dict(Counter(health)),
                                      "server log lines per level": dict(levels),
                                      "RSS after warm-up MiB": rss_warm >> 20, "RSS after the run MiB": rss_after >> 20,
                                      "inputs in the whole file": ENROLL_EXAMPLES * (ENROLL_REQUESTS + ENROLL_RAW)
                                      + AGENT_EXAMPLES * (LONG_LIVED + CLOSING + RAW)}))
        assert sum(counted.inputs.values()) == ENROLL_EXAMPLES * (ENROLL_REQUESTS + ENROLL_RAW)
        assert agents == set(good.issued), "a hostile request created an Agent"
        assert uses == len(good.issued), "a hostile request spent the group's join token"
        assert rss_after - rss_warm < RSS_GROWTH_BOUND
        assert not levels["error"] and not levels["critical"], "the server logged an error"
