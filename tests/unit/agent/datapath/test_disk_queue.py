"""The durable queue on a real SQLite file: durability across reopen, immutable batches, acks, the byte limit,
eviction accounting, and a model-based run of random enqueue/seal/ack/crash sequences."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from opsmgr.agent.lanes import LANE_OF, ItemKind, Lane, kind_of
from opsmgr.agent.queue import MIN_LIMIT_BYTES, DiskQueue, QueueStore
from opsmgr.protocol import agent_channel_pb2 as pb

OP, WH = pb.DATABASE_OPERATIONAL, pb.DATABASE_WAREHOUSE
COMMITTED, DEFERRED, REJECTED = pb.Ack.OUTCOME_COMMITTED, pb.Ack.OUTCOME_DEFERRED, pb.Ack.OUTCOME_REJECTED


def item(kind: ItemKind, tag: str, padding: int = 0) -> pb.Item:
    text = "x" * padding
    if kind is ItemKind.PERFORMANCE:
        return pb.Item(performance=pb.PerformanceSample(object_key=tag, counter_name=text, value=1.0))
    if kind is ItemKind.EVENT:
        return pb.Item(event=pb.Event(object_key=tag, description=text))
    if kind is ItemKind.DISCOVERY:
        return pb.Item(discovery=pb.DiscoveryItem(object_key=tag, display_name=text))
    if kind is ItemKind.STATE:
        return pb.Item(state=pb.StateChange(object_key=tag, monitor=text))
    return pb.Item(alert=pb.Alert(object_key=tag, description=text))


def tags_of(message: bytes) -> list[str]:
    return [getattr(i, i.WhichOneof("kind")).object_key for i in pb.AgentMessage.FromString(message).batch.items]


def ack(store: QueueStore, seq: int, database: int, outcome: int = COMMITTED) -> pb.Ack:
    return pb.Ack(epoch=store.epoch, seq=seq, database=database, outcome=outcome)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path / "queue.sqlite", 4 * 1024 * 1024)


def test_the_queue_is_in_wal_mode_with_full_sync_and_keeps_its_epoch_across_reopen(tmp_path: Path) -> None:
    first = QueueStore(tmp_path / "q.sqlite")
    epoch = first.epoch
    first.close()
    db = sqlite3.connect(tmp_path / "q.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    again = QueueStore(tmp_path / "q.sqlite")
    assert again.epoch == epoch
    assert QueueStore(tmp_path / "other.sqlite").epoch != epoch, "a new queue is a new epoch"


def test_items_and_sealed_batches_survive_a_reopen_and_the_seq_never_repeats(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    store = QueueStore(path)
    store.enqueue([item(ItemKind.ALERT, "a1"), item(ItemKind.EVENT, "e1")])
    sealed = store.next_batch(Lane.PRIORITY).batch
    assert sealed is not None and tags_of(sealed.message) == ["a1"]
    store.close()  # as after kill -9: every call above had committed
    store = QueueStore(path)
    replay = store.next_batch(Lane.PRIORITY).batch
    assert replay is not None and replay.message == sealed.message, "a replay is byte-for-byte the same batch"
    bulk = store.next_batch(Lane.BULK).batch
    assert bulk is not None and bulk.seq == sealed.seq + 1 and tags_of(bulk.message) == ["e1"]


def test_a_batch_leaves_once_every_database_it_belongs_to_acknowledged_it(store: QueueStore) -> None:
    store.enqueue([item(ItemKind.EVENT, "e1")])
    batch = store.next_batch(Lane.BULK).batch
    assert batch is not None
    store.acknowledge([ack(store, batch.seq, OP)])
    assert store.status().depth_items == 1
    replay = store.next_batch(Lane.BULK).batch
    assert replay is not None
    assert list(pb.AgentMessage.FromString(replay.message).batch.databases) == [WH], "replay names only the owed DB"
    store.acknowledge([ack(store, batch.seq, WH, pb.Ack.OUTCOME_ALREADY_COMMITTED)])
    assert store.status().depth_items == 0
    assert store.counter("delivered:event") == 1


def test_acks_of_another_epoch_or_unknown_batches_change_nothing(store: QueueStore) -> None:
    store.enqueue([item(ItemKind.ALERT, "a1")])
    batch = store.next_batch(Lane.PRIORITY).batch
    assert batch is not None
    foreign = pb.Ack(epoch="00000000-0000-0000-0000-000000000000", seq=batch.seq, database=OP, outcome=COMMITTED)
    results = store.acknowledge([foreign, ack(store, 999, OP)])
    assert [r.fate for r in results] == [None, None]
    assert store.status().depth_items == 1


def test_a_rejected_batch_is_dropped_and_counted(store: QueueStore) -> None:
    store.enqueue([item(ItemKind.ALERT, "a1"), item(ItemKind.STATE, "s1")])
    batch = store.next_batch(Lane.PRIORITY).batch
    assert batch is not None
    store.acknowledge([ack(store, batch.seq, pb.DATABASE_UNSPECIFIED, REJECTED)])
    status = store.status()
    assert status.depth_items == 0 and status.rejected_items == 2


def test_bulk_lingers_to_fill_a_batch(tmp_path: Path) -> None:
    now = [1000.0]
    store = QueueStore(tmp_path / "q.sqlite", clock=lambda: now[0])
    store.enqueue([item(ItemKind.PERFORMANCE, "p1")])
    waiting = store.next_batch(Lane.BULK, linger_seconds=2.0)
    assert waiting.batch is None and waiting.retry_after == pytest.approx(2.0)
    now[0] += 2.0
    assert store.next_batch(Lane.BULK, linger_seconds=2.0).batch is not None


def test_a_batch_holds_at_most_max_items(store: QueueStore) -> None:
    store.enqueue([item(ItemKind.EVENT, f"e{i}") for i in range(25)])
    batch = store.next_batch(Lane.BULK, max_items=10).batch
    assert batch is not None and tags_of(batch.message) == [f"e{i}" for i in range(10)]


def test_a_full_queue_evicts_oldest_performance_first_counts_it_and_stays_within_its_limit(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.sqlite", MIN_LIMIT_BYTES)
    store.enqueue([item(ItemKind.ALERT, f"a{i}", 200) for i in range(50)])
    for round_ in range(60):
        store.enqueue([item(ItemKind.PERFORMANCE, f"p{round_}-{i}", 200) for i in range(20)])
        assert store.size_on_disk() <= MIN_LIMIT_BYTES
    status = store.status()
    evicted = status.evicted_by_kind[ItemKind.PERFORMANCE]
    assert evicted > 0 and status.evicted_items_total == evicted, "only performance data may go"
    assert status.depth_items == 50 + 60 * 20 - evicted
    remaining = [row[0] for row in store._db.execute("SELECT payload FROM items WHERE kind = 0 ORDER BY id")]
    first_kept = pb.Item.FromString(remaining[0]).performance.object_key
    assert first_kept != "p0-0", "the oldest samples go first"
    wire = status.to_wire()
    assert wire.evicted_items_total == evicted and dict(wire.evicted_by_kind) == {"performance": evicted}


def test_new_performance_data_never_pushes_out_alerts(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.sqlite", MIN_LIMIT_BYTES)
    round_ = 0
    while store.status().evicted_items_total == 0:  # fill with alerts until the queue is full
        round_ += 1
        store.enqueue([item(ItemKind.ALERT, f"a{round_}-{i}", 300) for i in range(5)])
    alerts_before = store.status().depth_items
    evicted = store.enqueue([item(ItemKind.PERFORMANCE, f"p{i}", 300) for i in range(50)])
    assert evicted.by_kind[ItemKind.PERFORMANCE] == 50
    assert store.status().depth_items == alerts_before


def test_alerts_arriving_with_more_events_than_an_empty_queue_holds_are_all_kept(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.sqlite", 1024 * 1024)
    mixed = [item(ItemKind.ALERT, f"a{i}", 200) for i in range(150)]
    mixed += [item(ItemKind.EVENT, f"e{i}", 400) for i in range(2500)]
    evicted = store.enqueue(mixed)
    status = store.status()
    assert evicted.by_kind[ItemKind.ALERT] == 0 and status.evicted_by_kind[ItemKind.ALERT] == 0
    assert 0 < evicted.by_kind[ItemKind.EVENT] < 2500, "only as many events as do not fit"
    assert status.depth_items == 150 + 2500 - evicted.by_kind[ItemKind.EVENT]
    assert store.size_on_disk() <= 1024 * 1024


def _fill_with_alerts_then_events(path: Path, pinned_by_reader: bool) -> tuple[dict[ItemKind, int], int]:
    store = QueueStore(path, 1024 * 1024)
    reader = sqlite3.connect(path, isolation_level=None)
    if pinned_by_reader:  # another process mid-read keeps every WAL frame from being checkpointed away
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM items").fetchone()
    store.enqueue([item(ItemKind.ALERT, f"a{i}", 200) for i in range(150)])
    for start in range(0, 4000, 500):
        store.enqueue([item(ItemKind.EVENT, f"e{i}", 400) for i in range(start, start + 500)])
    status = store.status()
    reader.close()
    store.close()
    return status.evicted_by_kind, status.depth_items


def test_a_wal_pinned_by_another_process_evicts_nothing_more_and_never_an_alert(tmp_path: Path) -> None:
    alone, depth_alone = _fill_with_alerts_then_events(tmp_path / "alone.sqlite", pinned_by_reader=False)
    pinned, depth_pinned = _fill_with_alerts_then_events(tmp_path / "pinned.sqlite", pinned_by_reader=True)
    assert alone[ItemKind.EVENT] > 0 and alone[ItemKind.ALERT] == 0
    assert pinned == alone and depth_pinned == depth_alone, "a WAL that cannot shrink yet is not data to evict"


def test_evictions_are_counted_durably(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    store = QueueStore(path, MIN_LIMIT_BYTES)
    for round_ in range(40):
        store.enqueue([item(ItemKind.EVENT, f"e{round_}-{i}", 500) for i in range(20)])
    counted = store.status().evicted_by_kind
    store.close()
    assert QueueStore(path, MIN_LIMIT_BYTES).status().evicted_by_kind == counted


def test_acknowledged_space_is_given_back_to_the_file_system(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.sqlite", 8 * 1024 * 1024)
    store.enqueue([item(ItemKind.EVENT, f"e{i}", 1000) for i in range(3000)])
    grown = store.size_on_disk()
    while (batch := store.next_batch(Lane.BULK).batch) is not None:
        store.acknowledge([ack(store, batch.seq, OP), ack(store, batch.seq, WH)])
    store.reclaim()
    assert store.size_on_disk() < grown / 10


class QueueModel(RuleBasedStateMachine):
    """Random enqueue, seal, ack, defer, reject and crash: nothing un-acked and un-evicted is ever lost, nothing is
    in two places, every eviction is counted, and a seq is never sealed twice."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="queue-model-"))
        self.store = QueueStore(self.directory / "q.sqlite", MIN_LIMIT_BYTES)
        self.enqueued: dict[str, ItemKind] = {}
        self.delivered: set[str] = set()
        self.rejected: set[str] = set()
        self.sealed: dict[int, list[str]] = {}
        self.in_flight: set[int] = set()
        self.counter = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(kind=st.sampled_from(ItemKind), count=st.integers(1, 30), padding=st.sampled_from([0, 100, 2000]))
    def enqueue(self, kind: ItemKind, count: int, padding: int) -> None:
        batch = []
        for _ in range(count):
            self.counter += 1
            tag = f"t{self.counter}"
            self.enqueued[tag] = kind
            batch.append(item(kind, tag, padding))
        self.store.enqueue(batch)

    @rule(lane=st.sampled_from(Lane), max_items=st.integers(1, 40))
    def send(self, lane: Lane, max_items: int) -> None:
        batch = self.store.next_batch(lane, self.in_flight, max_items=max_items).batch
        if batch is None:
            return
        tags = tags_of(batch.message)
        if batch.seq in self.sealed:
            assert tags == self.sealed[batch.seq], "a sealed batch never changes"
        else:
            assert all(batch.seq > seq for seq in self.sealed), "seqs only grow"
            self.sealed[batch.seq] = tags
        assert all(LANE_OF[self.enqueued[t]] is lane for t in tags)
        self.in_flight.add(batch.seq)

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data(), database=st.sampled_from([OP, WH]),
          outcome=st.sampled_from([COMMITTED, pb.Ack.OUTCOME_ALREADY_COMMITTED, DEFERRED, REJECTED]))
    def acknowledge(self, data: st.DataObject, database: int, outcome: int) -> None:
        seq = data.draw(st.sampled_from(sorted(self.in_flight)))
        [result] = self.store.acknowledge([ack(self.store, seq, database, outcome)])
        if result.fate is None:
            self.in_flight.discard(seq)
            return
        if result.fate.value in ("delivered", "rejected"):
            target = self.delivered if result.fate.value == "delivered" else self.rejected
            target.update(self.sealed[seq])
            self.in_flight.discard(seq)
        elif result.fate.value == "deferred":
            self.in_flight.discard(seq)

    @rule()
    def crash(self) -> None:
        self.store.close()
        self.store = QueueStore(self.directory / "q.sqlite", MIN_LIMIT_BYTES)
        self.in_flight.clear()

    @invariant()
    def nothing_lost_nothing_twice_every_eviction_counted(self) -> None:
        db = self.store._db
        present: list[str] = []
        for (payload,) in db.execute("SELECT payload FROM items"):
            parsed = pb.Item.FromString(payload)
            present.append(getattr(parsed, parsed.WhichOneof("kind")).object_key)
        for (message,) in db.execute("SELECT message FROM batches"):
            present.extend(tags_of(message))
        assert len(present) == len(set(present)), "an item is in two places"
        left = set(present)
        assert not left & self.delivered
        gone = set(self.enqueued) - left - self.delivered - self.rejected
        evicted = Counter(self.enqueued[tag] for tag in gone)
        assert self.store.status().evicted_by_kind == {k: evicted.get(k, 0) for k in ItemKind}
        assert self.store.size_on_disk() <= MIN_LIMIT_BYTES + 64 * 1024
        assert all(kind_of(item(k, "x")) is k for k in evicted)


TestQueueModel = QueueModel.TestCase
TestQueueModel.settings = settings(max_examples=20, stateful_step_count=25, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


async def test_a_heartbeat_takes_the_status_last_read_and_asks_for_a_fresh_one_for_the_next(tmp_path: Path) -> None:
    queue = await DiskQueue.open(tmp_path / "queue.sqlite")
    try:
        await queue.enqueue([item(ItemKind.EVENT, str(n)) for n in range(3)])
        assert queue.recent_status().depth_items == 0, "the status read when the queue was opened"
        await queue.reclaim()  # the queue's thread runs its calls in order: the fresh read came before this one
        assert queue.recent_status().depth_items == 3
        assert (await queue.status()).depth_items == 3
    finally:
        await queue.close()
