"""The agent's durable send queue: SQLite in WAL mode, every item on disk before it is sent.

Layout: `items` holds what waits for a batch (the wire encoding of each `Item`); `batches` holds immutable sealed
batches as the exact `AgentMessage` bytes that go on the wire, with the databases that must still acknowledge them;
`counters` holds eviction and rejection totals, changed in the same transaction as the rows they count.

Durability: `synchronous=FULL`, so a committed transaction survives power loss, not only kill -9. NORMAL would
lose the last commits on reboot, and a sealed batch that the server already committed could then be sealed
again under the same seq with other items, which the server would skip as already written: silent loss.

Size: the limit is measured as bytes on disk, the main file plus the WAL. Freed pages are returned to the file
system by `auto_vacuum=INCREMENTAL` and a truncating checkpoint, so deleting rows really frees space.

`QueueStore` is the synchronous core (one SQLite connection, one thread); `DiskQueue` is its asyncio face, which
runs every call on one dedicated thread: a commit waits for fsync, which must never stall the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from opsmgr.agent.lanes import LANE_OF, Databases, ItemKind, Lane, databases_for, kind_of
from opsmgr.agent.queue_policy import (
    DEFAULT_LIMIT_BYTES,
    AckOutcome,
    BatchFate,
    QueuedItem,
    apply_ack,
    batch_due,
    choose_evictions,
    form_batch,
)
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.limits import MAX_BATCH_ITEMS, MAX_MESSAGE_BYTES

SCHEMA_VERSION = 1
# What a row costs beyond its payload (record header, two index entries); corrected by measuring after eviction.
ROW_OVERHEAD = 48
# Evict this much of the limit beyond what is needed, so a full queue evicts in rounds, not on every enqueue.
EVICTION_HEADROOM = 0.01
# Room left in a message for the envelope and per-item framing.
MESSAGE_HEADROOM = 64 * 1024
MIN_LIMIT_BYTES = 256 * 1024
BUSY_TIMEOUT_MS = 10_000  # another process (a local producer) may hold the write lock briefly

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind INTEGER NOT NULL,
  lane INTEGER NOT NULL,
  size INTEGER NOT NULL,
  enqueued_at REAL NOT NULL,
  payload BLOB NOT NULL
);
CREATE INDEX items_by_lane ON items (lane, id, kind, size, enqueued_at);
CREATE INDEX items_by_eviction ON items (kind, id, size);
CREATE TABLE batches (
  seq INTEGER PRIMARY KEY,
  lane INTEGER NOT NULL,
  needed INTEGER NOT NULL,
  acked INTEGER NOT NULL DEFAULT 0,
  kinds TEXT NOT NULL,
  sealed_at REAL NOT NULL,
  message BLOB NOT NULL
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class QueueError(RuntimeError):
    """The queue file cannot be used; the message names the path and the fix."""


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """An immutable batch as stored: `message` is the serialized `AgentMessage` carrying its `DataBatch`."""

    seq: int
    lane: Lane
    needed: Databases
    acked: Databases
    kinds: dict[ItemKind, int]
    message: bytes

    @property
    def item_count(self) -> int:
        return sum(self.kinds.values())


@dataclass(frozen=True, slots=True)
class NextBatch:
    """The next batch of a lane to send, or none yet and how long until one may be due."""

    batch: SealedBatch | None
    retry_after: float | None  # seconds until a lingering bulk batch is due; None when nothing waits


@dataclass(frozen=True, slots=True)
class QueueStatus:
    depth_items: int
    size_bytes: int
    limit_bytes: int
    evicted_by_kind: dict[ItemKind, int]
    rejected_items: int

    @property
    def evicted_items_total(self) -> int:
        return sum(self.evicted_by_kind.values())

    def to_wire(self) -> pb.QueueStatus:
        return pb.QueueStatus(depth_items=self.depth_items, size_bytes=self.size_bytes, limit_bytes=self.limit_bytes,
                              evicted_items_total=self.evicted_items_total,
                              evicted_by_kind={k.label: n for k, n in self.evicted_by_kind.items() if n})


@dataclass(frozen=True, slots=True)
class AckResult:
    fate: BatchFate | None  # None: not ours or already gone (a duplicate acknowledgement)
    seq: int
    item_count: int = 0


@dataclass(slots=True)
class Evicted:
    """What one enqueue had to give up to fit, by kind (the incoming items included if they could never fit)."""

    by_kind: Counter[ItemKind] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def _counter_name(prefix: str, kind: ItemKind) -> str:
    return f"{prefix}:{kind.label}"


def _encode_kinds(kinds: Counter[ItemKind]) -> str:
    return json.dumps({k.label: n for k, n in sorted(kinds.items())})


def _decode_kinds(text: str) -> dict[ItemKind, int]:
    by_label = {k.label: k for k in ItemKind}
    return {by_label[label]: int(n) for label, n in json.loads(text).items()}


class QueueStore:
    """The synchronous queue on one SQLite connection. Not thread-safe: `DiskQueue` gives it one thread."""

    def __init__(self, path: Path, limit_bytes: int = DEFAULT_LIMIT_BYTES, *,
                 clock: Callable[[], float] = time.time) -> None:
        if limit_bytes < MIN_LIMIT_BYTES:
            raise QueueError(f"queue limit {limit_bytes} bytes is below the minimum {MIN_LIMIT_BYTES}: raise it")
        self.path = path
        self.limit_bytes = limit_bytes
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._configure()
            self.epoch = self._initialise()
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"queue file {path} cannot be opened ({exc}): check the path and its permissions, or "
                             "move a damaged file aside (a new file starts a new epoch)") from exc
        self._page_size = self._pragma("page_size")

    # ------------------------------------------------------------------ setup

    def _configure(self) -> None:
        # auto_vacuum must be chosen before the first table exists; it is a no-op on an existing file.
        self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise QueueError(f"queue file {self.path}: the file system does not support SQLite's WAL mode "
                             f"(journal_mode stays {mode}); put the queue on a local disk")
        self._db.execute("PRAGMA synchronous = FULL")
        page_size = self._pragma("page_size")
        # Checkpoint often enough that the WAL stays a small part of the limit, and truncate it after each.
        checkpoint_pages = max(16, min(1000, self.limit_bytes // page_size // 32))
        self._db.execute(f"PRAGMA wal_autocheckpoint = {checkpoint_pages}")
        self._db.execute(f"PRAGMA journal_size_limit = {checkpoint_pages * page_size}")
        self._wal_allowance = checkpoint_pages * page_size

    def _initialise(self) -> str:
        with self._write():
            exists = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            if not exists:
                # executescript would commit the open transaction first; one statement at a time keeps it atomic.
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("epoch", str(uuid.uuid4())), ("next_seq", "0"),
                    ("created_at", str(self._clock()))])
            version = int(self._meta("schema_version"))
            if version != SCHEMA_VERSION:
                raise QueueError(f"queue file {self.path} has schema version {version}, this agent reads "
                                 f"{SCHEMA_VERSION}: run the agent release that wrote it until the queue drains")
            return self._meta("epoch")

    def _pragma(self, name: str) -> int:
        return int(self._db.execute(f"PRAGMA {name}").fetchone()[0])

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise QueueError(f"queue file {self.path} lacks meta.{key}: move the damaged file aside")
        return str(row[0])

    def _write(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ size

    def size_on_disk(self) -> int:
        """Bytes the queue occupies on disk: the main file and the WAL."""
        return self._file_size("") + self._file_size("-wal")

    def _usage(self) -> int:
        """What eviction can act on: the pages holding data, plus the WAL's steady-state allowance.

        Not the WAL's current size: a reader in another process (a local producer, `opsmgr agent` itself) pins it
        until its read ends, and deleting rows then only grows it. Counting it evicted every item, alerts too,
        for space that a checkpoint a moment later gives back without losing anything.
        """
        in_use = self._pragma("page_count") - self._pragma("freelist_count")
        return in_use * self._page_size + self._wal_allowance

    def _file_size(self, suffix: str) -> int:
        try:
            return os.stat(f"{self.path}{suffix}").st_size
        except FileNotFoundError:
            return 0

    def reclaim(self) -> None:
        """Give freed pages back to the file system and empty the WAL; cheap when there is nothing to give back."""
        if self._pragma("freelist_count"):
            # executescript steps the pragma to completion; execute() would free one page per call.
            self._db.executescript("PRAGMA incremental_vacuum;")
        # TRUNCATE waits in the busy handler for every reader to leave the WAL; a reader in another process can
        # stay for long, and each enqueue would stall for the whole timeout. Without waiting, the checkpoint
        # still copies every frame it can, as a PASSIVE one does, and the next reclaim finishes the job.
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def reclaim_if_worthwhile(self) -> None:
        free = self._pragma("freelist_count") * self._page_size
        if free >= max(1024 * 1024, self.limit_bytes // 20):
            self.reclaim()

    # ------------------------------------------------------------------ enqueue and eviction

    def enqueue(self, items: Sequence[pb.Item]) -> Evicted:
        """Make `items` durable; evict the oldest lowest-priority data first when they would not fit."""
        now = self._clock()
        rows = [(int(kind), int(LANE_OF[kind]), len(payload), now, payload)
                for kind, payload in ((kind_of(item), item.SerializeToString()) for item in items)]
        if not rows:
            return Evicted()
        incoming = sum(row[2] + ROW_OVERHEAD for row in rows)
        # Room is made in advance only from data less important than every incoming item; the rest is decided
        # after the insert, when the incoming items compete too (new performance data never pushes out an alert).
        evicted = self._make_room(incoming, below=ItemKind(min(row[0] for row in rows)))
        if self._usage() + incoming > self.limit_bytes:
            # Still full of more important data: incoming items less important than all of it are the eviction.
            # With no item waiting, nothing queued outranks them: they compete among themselves after the insert
            # (an alert arriving with too many events is kept, the oldest events go).
            lowest = self._db.execute("SELECT min(kind) FROM items").fetchone()[0]
            floor = 0 if lowest is None else int(lowest)
            dropped = Counter(ItemKind(row[0]) for row in rows if row[0] < floor)
            if dropped:
                with self._write():
                    self._count("evicted", dropped)
                evicted.by_kind.update(dropped)
                rows = [row for row in rows if row[0] >= floor]
        if not rows:
            return evicted
        with self._write():
            self._db.executemany(
                "INSERT INTO items (kind, lane, size, enqueued_at, payload) VALUES (?, ?, ?, ?, ?)", rows)
        # The estimate can fall short (page fill, index entries): what is on disk decides, as soon as it is there.
        evicted.by_kind.update(self._make_room(0).by_kind)
        return evicted

    def _make_room(self, incoming: int, below: ItemKind | None = None) -> Evicted:
        evicted = Evicted()
        if max(self._usage(), self.size_on_disk()) + incoming <= self.limit_bytes:
            return evicted
        self.reclaim()  # often enough by itself: freed pages and a checkpointed WAL are not data
        headroom = int(self.limit_bytes * EVICTION_HEADROOM)
        while (over := self._usage() + incoming - self.limit_bytes) > 0:
            freed = self._evict(over + headroom, below)
            if not freed:
                break
            evicted.by_kind.update(freed)
            self.reclaim()
        return evicted

    def _evict(self, bytes_to_free: int, below: ItemKind | None) -> Counter[ItemKind]:
        """One eviction round in one transaction: waiting items first, then unacknowledged sealed batches."""
        with self._write():
            candidates = self._eviction_candidates(below)
            try:
                chosen = choose_evictions(candidates, bytes_to_free)
            finally:
                candidates.close()  # an open statement would keep the pages it read from being given back
            freed = Counter(item.kind for item in chosen)
            if chosen:
                self._db.executemany("DELETE FROM items WHERE id = ?", [(item.id,) for item in chosen])
            elif below is None and (sealed := self._db.execute(
                    "SELECT seq, kinds FROM batches WHERE acked = 0 ORDER BY lane DESC, seq LIMIT 1").fetchone()):
                # Sealed batches are bounded by the send window; only when nothing else is left do they go, whole.
                self._db.execute("DELETE FROM batches WHERE seq = ?", (sealed[0],))
                freed.update(_decode_kinds(sealed[1]))
            self._count("evicted", freed)
            return freed

    def _eviction_candidates(self, below: ItemKind | None) -> Generator[QueuedItem]:
        # Streamed from the covering index in eviction order; the policy stops reading once enough is freed.
        cursor = self._db.execute("SELECT id, kind, size FROM items WHERE kind < ? ORDER BY kind, id",
                                  (len(ItemKind) if below is None else int(below),))
        try:
            for item_id, kind, size in cursor:
                yield QueuedItem(item_id, ItemKind(kind), size + ROW_OVERHEAD)
        finally:
            cursor.close()

    def _count(self, prefix: str, kinds: Counter[ItemKind] | dict[ItemKind, int]) -> None:
        self._db.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [(_counter_name(prefix, kind), n) for kind, n in kinds.items() if n])

    # ------------------------------------------------------------------ batches

    def next_batch(self, lane: Lane, exclude: Iterable[int] = (), *, max_items: int = MAX_BATCH_ITEMS,
                   max_message_bytes: int = MAX_MESSAGE_BYTES, linger_seconds: float = 0.0) -> NextBatch:
        """The oldest sealed batch of `lane` not in `exclude` (a replay), else a newly sealed one when due."""
        excluded = sorted(set(exclude))
        marks = ",".join("?" * len(excluded))
        row = self._db.execute(
            f"SELECT seq, lane, needed, acked, kinds, message FROM batches WHERE lane = ? "  # noqa: S608 - only '?'s
            f"AND seq NOT IN ({marks}) ORDER BY seq LIMIT 1", (int(lane), *excluded)).fetchone()
        if row is not None:
            return NextBatch(_replayed(_sealed(row)), None)
        sealed = self._seal(lane, max_items, max(1, max_message_bytes - MESSAGE_HEADROOM), linger_seconds)
        if sealed.batch is not None and max(self._usage(), self.size_on_disk()) > self.limit_bytes:
            # Sealing rewrites items as a batch: the WAL briefly holds both, so the limit is enforced here too.
            self._make_room(0)
        return sealed

    def _seal(self, lane: Lane, max_items: int, max_bytes: int, linger_seconds: float) -> NextBatch:
        with self._write():
            head = self._db.execute(
                "SELECT count(*), min(enqueued_at) FROM (SELECT enqueued_at FROM items WHERE lane = ? "
                "ORDER BY id LIMIT ?)", (int(lane), max_items)).fetchone()
            pending, oldest = int(head[0]), head[1]
            age = self._clock() - oldest if oldest is not None else 0.0
            if not batch_due(lane, pending, age, max_items=max_items, linger_seconds=linger_seconds):
                return NextBatch(None, max(0.0, linger_seconds - age) if pending else None)
            chosen = form_batch(self._pending(lane, max_items), max_items=max_items, max_bytes=max_bytes)
            first, last = chosen[0].id, chosen[-1].id
            payloads = self._db.execute(
                "SELECT payload FROM items WHERE lane = ? AND id BETWEEN ? AND ? ORDER BY id",
                (int(lane), first, last)).fetchall()
            seq = int(self._meta("next_seq"))
            batch = pb.DataBatch(epoch=self.epoch, seq=seq, lane=int(lane))  # type: ignore[arg-type]
            for (payload,) in payloads:
                batch.items.add().MergeFromString(payload)
            kinds = Counter(item.kind for item in chosen)
            needed = databases_for(kinds)
            message = pb.AgentMessage(batch=batch).SerializeToString()
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq + 1),))
            self._db.execute(
                "INSERT INTO batches (seq, lane, needed, acked, kinds, sealed_at, message) "
                "VALUES (?, ?, ?, 0, ?, ?, ?)",
                (seq, int(lane), int(needed), _encode_kinds(kinds), self._clock(), message))
            self._db.execute("DELETE FROM items WHERE lane = ? AND id BETWEEN ? AND ?", (int(lane), first, last))
            return NextBatch(SealedBatch(seq, lane, needed, Databases(0), dict(kinds), message), None)

    def _pending(self, lane: Lane, limit: int) -> Iterator[QueuedItem]:
        rows = self._db.execute("SELECT id, kind, size FROM items WHERE lane = ? ORDER BY id LIMIT ?",
                                (int(lane), limit)).fetchall()
        for item_id, kind, size in rows:
            yield QueuedItem(item_id, ItemKind(kind), size)

    def acknowledge(self, acks: Sequence[pb.Ack]) -> list[AckResult]:
        """Apply per-database acks in one transaction; a batch leaves once every database it needs has it."""
        results: list[AckResult] = []
        with self._write():
            for ack in acks:
                results.append(self._apply(ack))
        self.reclaim_if_worthwhile()
        return results

    def _apply(self, ack: pb.Ack) -> AckResult:
        outcome = int(ack.outcome)
        known = outcome in {int(o) for o in AckOutcome}
        unspecified = ack.database == pb.DATABASE_UNSPECIFIED and outcome != AckOutcome.REJECTED
        if ack.epoch != self.epoch or not known or unspecified:
            return AckResult(None, ack.seq)
        database = Databases.from_wire(ack.database)
        row = self._db.execute("SELECT needed, acked, kinds FROM batches WHERE seq = ?", (ack.seq,)).fetchone()
        if row is None:
            return AckResult(None, ack.seq)
        kinds = _decode_kinds(row[2])
        decision = apply_ack(Databases(row[0]), Databases(row[1]), database, AckOutcome(outcome))
        if decision.fate in (BatchFate.KEEP, BatchFate.DEFERRED):
            self._db.execute("UPDATE batches SET acked = ? WHERE seq = ?", (int(decision.acked), ack.seq))
        else:
            self._db.execute("DELETE FROM batches WHERE seq = ?", (ack.seq,))
            self._count("delivered" if decision.fate is BatchFate.DELIVERED else "rejected", kinds)
        return AckResult(decision.fate, ack.seq, sum(kinds.values()))

    # ------------------------------------------------------------------ status

    def status(self) -> QueueStatus:
        waiting = int(self._db.execute("SELECT count(*) FROM items").fetchone()[0])
        sealed = sum(sum(_decode_kinds(k).values()) for (k,) in self._db.execute("SELECT kinds FROM batches"))
        counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        evicted = {kind: int(counters.get(_counter_name("evicted", kind), 0)) for kind in ItemKind}
        rejected = sum(int(counters.get(_counter_name("rejected", kind), 0)) for kind in ItemKind)
        return QueueStatus(waiting + sealed, self.size_on_disk(), self.limit_bytes, evicted, rejected)

    def counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write():
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def sealed_seqs(self) -> list[int]:
        return [int(seq) for (seq,) in self._db.execute("SELECT seq FROM batches ORDER BY seq")]


def _sealed(row: tuple[int, int, int, int, str, bytes]) -> SealedBatch:
    seq, lane, needed, acked, kinds, message = row
    return SealedBatch(seq, Lane(lane), Databases(needed), Databases(acked), _decode_kinds(kinds), message)


def _replayed(batch: SealedBatch) -> SealedBatch:
    """A batch some databases already have names only the others, so the server writes nowhere twice."""
    if not batch.acked:
        return batch
    message = pb.AgentMessage.FromString(batch.message)
    message.batch.databases[:] = (batch.needed & ~batch.acked).to_wire()  # type: ignore[assignment]
    return SealedBatch(batch.seq, batch.lane, batch.needed, batch.acked, batch.kinds, message.SerializeToString())


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so two writers never deadlock on an upgrade."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        self._outer = not self._db.in_transaction
        if self._outer:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if not self._outer:
            return
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


_T = TypeVar("_T")


class DiskQueue:
    """The durable send queue for asyncio code: every call runs on the queue's own thread, one at a time.

    Listeners registered with `on_change` run after every enqueue of this process, so the sender wakes without
    polling; items enqueued by another local process are found by the sender's idle re-check.
    """

    def __init__(self, store: QueueStore, executor: ThreadPoolExecutor, status: QueueStatus) -> None:
        self._store = store
        self._executor = executor
        self.epoch = store.epoch
        self.limit_bytes = store.limit_bytes
        self.path = store.path
        self._listeners: list[Callable[[], None]] = []
        self._status = status  # the last one read on the queue's thread
        self._refreshing: asyncio.Future[QueueStatus] | None = None

    @classmethod
    async def open(cls, path: Path, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> DiskQueue:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="disk-queue")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, QueueStore, path, limit_bytes)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        try:
            status = await loop.run_in_executor(executor, store.status)
        except BaseException:
            await loop.run_in_executor(executor, store.close)
            executor.shutdown(wait=False)
            raise
        return cls(store, executor, status)

    async def _run(self, call: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: call(*args, **kwargs))

    async def enqueue(self, items: Sequence[pb.Item]) -> Evicted:
        evicted = await self._run(self._store.enqueue, items)
        for listener in self._listeners:
            listener()
        return evicted

    async def __call__(self, items: Sequence[pb.Item]) -> None:
        """The `ItemSink` that collection hands its items to: returns once they are on disk."""
        await self.enqueue(items)

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after each enqueue; returns the function that unregisters it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def next_batch(self, lane: Lane, exclude: Iterable[int] = (), *, max_items: int = MAX_BATCH_ITEMS,
                         max_message_bytes: int = MAX_MESSAGE_BYTES, linger_seconds: float = 0.0) -> NextBatch:
        return await self._run(self._store.next_batch, lane, tuple(exclude), max_items=max_items,
                               max_message_bytes=max_message_bytes, linger_seconds=linger_seconds)

    async def acknowledge(self, acks: Sequence[pb.Ack]) -> list[AckResult]:
        return await self._run(self._store.acknowledge, list(acks))

    async def status(self) -> QueueStatus:
        self._status = await self._run(self._store.status)
        return self._status

    def recent_status(self) -> QueueStatus:
        """The status last read, at once, for a heartbeat: on the queue's thread it would wait behind sealing
        5,000-item batches and fsynced acks, seconds during a replay. A fresh one is read there meanwhile, so the
        next call's is at most one call old."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().run_in_executor(self._executor, self._store.status)
            self._refreshing.add_done_callback(self._refreshed)
        return self._status

    def _refreshed(self, read: asyncio.Future[QueueStatus]) -> None:
        self._refreshing = None
        # A failed read keeps the status before it: the queue's own calls report a queue that cannot be read.
        if not read.cancelled() and read.exception() is None:
            self._status = read.result()

    async def reclaim(self) -> None:
        await self._run(self._store.reclaim)

    async def get_meta(self, key: str) -> str | None:
        return await self._run(self._store.get_meta, key)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self._store.set_meta, key, value)

    async def close(self) -> None:
        try:
            await self._run(self._store.close)
        finally:
            self._executor.shutdown(wait=True)
