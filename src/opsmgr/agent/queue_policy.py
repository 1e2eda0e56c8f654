"""The durable queue's decisions, as plain functions over plain data: what a full queue evicts, how batches form,
what an acknowledgement does to a batch, which lane sends next and how full is too full.

`DiskQueue` and `ServerConnection` gather the facts and apply the answers; everything here is unit-tested alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum

from opsmgr.agent.lanes import Databases, ItemKind, Lane
from opsmgr.protocol import agent_channel_pb2 as pb

DEFAULT_LIMIT_BYTES = 100 * 1024 * 1024  # Operations Manager's agent queue limit
WARNING_PERCENT = 50.0
CRITICAL_PERCENT = 60.0


@dataclass(frozen=True, slots=True)
class QueuedItem:
    """One item waiting on disk, not yet in a batch: `id` grows with age."""

    id: int
    kind: ItemKind
    size: int


def eviction_key(item: QueuedItem) -> tuple[int, int]:
    """Lowest priority first, then oldest: performance before events before discovery, state and alerts."""
    return int(item.kind), item.id


def choose_evictions(candidates: Iterable[QueuedItem], bytes_to_free: int) -> list[QueuedItem]:
    """The shortest prefix of `candidates` (already in `eviction_key` order) whose sizes add up to `bytes_to_free`.

    Fewer when the candidates run out: the caller then decides whether anything else may go.
    """
    chosen: list[QueuedItem] = []
    freed = 0
    for candidate in candidates:
        if freed >= bytes_to_free:
            break
        chosen.append(candidate)
        freed += candidate.size
    return chosen


def form_batch(pending: Iterable[QueuedItem], *, max_items: int, max_bytes: int) -> list[QueuedItem]:
    """The oldest pending items of one lane that fit one message; always at least one, so nothing is stuck.

    An item larger than `max_bytes` alone goes in a batch of its own; the server refuses it, and the rejection is
    counted instead of blocking the lane for ever.
    """
    batch: list[QueuedItem] = []
    total = 0
    for item in pending:
        if batch and (len(batch) >= max_items or total + item.size > max_bytes):
            break
        batch.append(item)
        total += item.size
    return batch


def batch_due(lane: Lane, pending_items: int, oldest_age_seconds: float, *, max_items: int,
              linger_seconds: float) -> bool:
    """Whether to seal a batch now: priority items never wait; bulk waits briefly to fill a batch."""
    if pending_items == 0:
        return False
    if lane is Lane.PRIORITY:
        return True
    return pending_items >= max_items or oldest_age_seconds >= linger_seconds


class AckOutcome(IntEnum):
    COMMITTED = pb.Ack.OUTCOME_COMMITTED
    ALREADY_COMMITTED = pb.Ack.OUTCOME_ALREADY_COMMITTED
    REJECTED = pb.Ack.OUTCOME_REJECTED
    DEFERRED = pb.Ack.OUTCOME_DEFERRED


class BatchFate(Enum):
    KEEP = "keep"  # some database it belongs to has not acknowledged it yet
    DELIVERED = "delivered"  # every database it belongs to has it: it leaves the queue
    REJECTED = "rejected"  # the server says it can never be written: it leaves, counted, never retried
    DEFERRED = "deferred"  # a database is behind: it stays, and is sent again after the server's retry delay


@dataclass(frozen=True, slots=True)
class AckDecision:
    acked: Databases
    fate: BatchFate


def apply_ack(needed: Databases, acked: Databases, database: Databases, outcome: AckOutcome) -> AckDecision:
    """What one per-database acknowledgement does to a batch that needs `needed` and already has `acked`."""
    if outcome is AckOutcome.REJECTED:
        return AckDecision(acked, BatchFate.REJECTED)
    if outcome is AckOutcome.DEFERRED:
        return AckDecision(acked, BatchFate.DEFERRED)
    now_acked = acked | (database & needed)
    return AckDecision(now_acked, BatchFate.DELIVERED if now_acked & needed == needed else BatchFate.KEEP)


@dataclass(frozen=True, slots=True)
class SendWindow:
    """How many batches may await acknowledgement on one stream, and how many of those only priority may use."""

    batches: int = 8
    reserved_for_priority: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.reserved_for_priority < self.batches:
            raise ValueError(f"reserved_for_priority={self.reserved_for_priority} must be 0..{self.batches - 1}")


def lane_to_send(window: SendWindow, in_flight: dict[Lane, int], ready: set[Lane]) -> Lane | None:
    """Which lane's next batch goes now: priority whenever the window has room, bulk only outside the reserve.

    A bulk backlog can therefore never occupy the slots a fresh alert needs; heartbeats bypass the window.
    """
    used = sum(in_flight.values())
    if Lane.PRIORITY in ready and used < window.batches:
        return Lane.PRIORITY
    if Lane.BULK in ready and in_flight.get(Lane.BULK, 0) < window.batches - window.reserved_for_priority \
            and used < window.batches:
        return Lane.BULK
    return None


class QueueHealth(IntEnum):
    """The "Send Queue % Used" monitor's states, numbered as `StateChange` numbers health."""

    HEALTHY = 1
    WARNING = 2
    CRITICAL = 3


def percent_used(size_bytes: int, limit_bytes: int) -> float:
    return 100.0 * size_bytes / limit_bytes if limit_bytes > 0 else 100.0


def queue_health(percent: float) -> QueueHealth:
    """Operations Manager's thresholds: warning at 50 %, critical at 60 %."""
    if percent >= CRITICAL_PERCENT:
        return QueueHealth.CRITICAL
    if percent >= WARNING_PERCENT:
        return QueueHealth.WARNING
    return QueueHealth.HEALTHY
