"""Writer pipelines: one per database, each a bounded queue drained by a few writers that group-commit.

The operational DB never waits for the warehouse because they share nothing: separate queues, writers, pools.
A pipeline's bound is in items (admitted and not yet committed); `submit` waits for room, which is how a full
database stops the server reading from agents (gRPC flow control does the rest). The warehouse pipeline can also
refuse instead of waiting once it is stalled, so a frozen warehouse never stops priority batches (DESIGN.md 4).

Batches read while their pipeline is full wait in the `BatchParking`, under one server-wide byte budget, so a
stream is read on past them: the heartbeats behind a batch are not held up by its wait. Only when the budget is
spent does a stream stop being read, and gRPC's flow control stops its agent as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from opsmgr.db.model import Batch, Database, Lane, Retention
from opsmgr.db.schema import prepare_database
from opsmgr.db.writer import (
    CommitResult,
    prepare_writer_connection,
    write_operational_batches,
    write_warehouse_batches,
)
from opsmgr.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

WRITERS: dict[Database, Callable[[asyncpg.Connection, Sequence[Batch], Retention],
                                 Awaitable[list[CommitResult]]]] = {
    Database.OPERATIONAL: write_operational_batches,
    Database.WAREHOUSE: write_warehouse_batches,
}
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 10.0
# An agent deletes a batch once acked, so a commit must survive a database crash before the ack goes out. A server
# tuned with synchronous_commit=off (a common setting) would otherwise lose acknowledged batches on a crash.
DURABLE_COMMITS = {"synchronous_commit": "on"}


class WriteFailed(RuntimeError):
    """The database did not commit the group this batch was in; the agent keeps it and replays."""


class BatchRefused(RuntimeError):
    """The database refuses this batch's data itself (SQLSTATE class 22 or 23): a replay would fail the same way,
    so the agent is told REJECTED and drops it, counted, instead of replaying it for ever."""


# Errors about the rows, not the database's state: written alone, the batch would fail again, the others would not.
REFUSED_DATA = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


@dataclass(eq=False)
class _Submission:
    batch: Batch
    weight: int
    future: asyncio.Future[CommitResult]


class DatabaseLink:
    """Connection pools to one database, created (and the schema prepared) on first use and after losing them: one
    shared by the server's duties, one for the ingest writers alone (their connections encode rows their own way,
    see prepare_writer_connection)."""

    def __init__(self, database: Database, dsn: str, *, pool_size: int, connect_timeout: float,
                 retention: Retention, writers: int) -> None:
        self.database = database
        self.dsn = dsn
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.retention = retention
        self.writers = writers
        self._pool: asyncpg.Pool | None = None
        self._writer_pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                pool = await self._create_pool(self.pool_size)
                try:
                    async with pool.acquire() as conn:
                        await prepare_database(conn, self.database, self.retention)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
                log.info("database ready", extra={"fields": {"database": self.database.value}})
            return self._pool

    async def writer_pool(self) -> asyncpg.Pool:
        await self.pool()  # the schema first
        async with self._opening:
            if self._writer_pool is None:
                self._writer_pool = await self._create_pool(self.writers, init=prepare_writer_connection,
                                                            reset=_keep_writer_session)
            return self._writer_pool

    async def _create_pool(self, size: int, **more: Any) -> asyncpg.Pool:
        return await asyncpg.create_pool(self.dsn, min_size=1, max_size=size, timeout=self.connect_timeout,
                                         command_timeout=None, server_settings=DURABLE_COMMITS, **more)

    async def close(self) -> None:
        pools = [pool for pool in (self._pool, self._writer_pool) if pool is not None]
        self._pool = self._writer_pool = None
        for pool in pools:
            try:
                async with asyncio.timeout(5):
                    await pool.close()
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()  # a stalled peer: a polite close waited in vain, so cut the sockets


async def _keep_writer_session(conn: asyncpg.Connection) -> None:
    """What the writers' pool does to a connection given back, after asyncpg rolls back a transaction left open:
    nothing more. The default reset (advisory unlock all, CLOSE ALL, UNLISTEN *, RESET ALL) is one more round trip
    per group commit, and undoes nothing here: the writers run their own statements in managed transactions and
    set, hold, declare and listen to nothing beyond a transaction."""


class IngestPipeline:
    """The bounded queue and writers of one database."""

    def __init__(self, link: DatabaseLink, metrics: ServerMetrics, *, capacity_items: int, writers: int,
                 batches_per_transaction: int, stall_seconds: float) -> None:
        self.link = link
        self.database = link.database
        self.metrics = metrics
        self.capacity_items = capacity_items
        self.batches_per_transaction = batches_per_transaction
        self.stall_seconds = stall_seconds
        self._writer_count = writers
        self._lanes: dict[Lane, deque[_Submission]] = {Lane.PRIORITY: deque(), Lane.BULK: deque()}
        self._used = 0  # items admitted and not yet committed or failed
        self._room = asyncio.Condition()
        self._work = asyncio.Condition()
        self._writing = 0
        self._last_progress = time.monotonic()
        self._failing_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._gauge = metrics.queued_items.labels(self.database.value)
        # Told of each batch this database committed (or had committed before), e.g. to follow monitor states.
        self.on_committed: list[Callable[[Batch], None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer(), name=f"{self.database}-writer-{n}")
                       for n in range(self._writer_count)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for lane in self._lanes.values():
            while lane:
                _resolve(lane.popleft().future, WriteFailed("the server is stopping"))
        await self.link.close()

    @property
    def used_items(self) -> int:
        return self._used

    def stalled(self) -> bool:
        """No commit for `stall_seconds` while writes are pending, or the database keeps failing."""
        if self._failing_since is not None:
            return True
        busy = self._writing > 0 or any(self._lanes.values())
        return busy and time.monotonic() - self._last_progress > self.stall_seconds

    async def submit(self, batch: Batch, *, refuse_when_stalled: bool = False) -> asyncio.Future[CommitResult] | None:
        """Queue `batch`, waiting for room; with `refuse_when_stalled`, returns None instead of waiting on a stall."""
        room = await self.reserve(batch.size, refuse_when_stalled=refuse_when_stalled)
        if room is None:
            return None
        return await self.enqueue(batch, room)

    async def reserve(self, items: int, *, refuse_when_stalled: bool = False) -> int | None:
        """Wait for room for a batch of `items` and take it, before the batch is formed: returns the room taken, for
        `enqueue` or `release`; with `refuse_when_stalled`, None instead of waiting on a stall."""
        weight = min(max(1, items), self.capacity_items)
        async with self._room:
            while self._used + weight > self.capacity_items:
                if refuse_when_stalled and self.stalled():
                    return None
                # Woken by every release; the timeout re-checks the stall verdict, which turns on the clock alone.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await self._room.wait()
            self._used += weight
            self._gauge.set(self._used)
        return weight

    async def enqueue(self, batch: Batch, room: int) -> asyncio.Future[CommitResult]:
        """Queue `batch` in the room `reserve` took for it."""
        submission = _Submission(batch, room, asyncio.get_running_loop().create_future())
        async with self._work:
            self._lanes[batch.lane].append(submission)
            self._work.notify()
        return submission.future

    async def _take(self) -> list[_Submission]:
        async with self._work:
            await self._work.wait_for(lambda: any(self._lanes.values()))
            group: list[_Submission] = []
            # Priority first: alerts and state never wait behind a backlog of performance data.
            for lane in (Lane.PRIORITY, Lane.BULK):
                queue = self._lanes[lane]
                while queue and len(group) < self.batches_per_transaction:
                    group.append(queue.popleft())
            return group

    async def _writer(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            group = await self._take()
            self._writing += 1
            started = time.monotonic()
            try:
                results = await self._write_isolating_refusals(group)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._failed(group, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except asyncio.CancelledError:
                for submission in group:
                    _resolve(submission.future, WriteFailed("the server is stopping"))
                raise
            finally:
                self._writing -= 1
                await self.release(sum(s.weight for s in group))
            backoff = _BACKOFF_FIRST
            self._committed(group, results, time.monotonic() - started)

    async def _write_isolating_refusals(self, group: list[_Submission]) -> list[CommitResult | BatchRefused]:
        """The group in one transaction; if the database refuses some batch's data, each batch alone, so one agent's
        bad batch never fails (and keeps failing, on every replay) the batches of others committed with it."""
        try:
            return list(await self._write(group))
        except REFUSED_DATA as refused:
            if len(group) == 1:
                return [self._refused(group[0], refused)]
        outcomes: list[CommitResult | BatchRefused] = []
        for submission in group:
            try:
                outcomes += await self._write([submission])
            except REFUSED_DATA as refused:
                outcomes.append(self._refused(submission, refused))
        return outcomes

    def _refused(self, submission: _Submission, error: asyncpg.PostgresError) -> BatchRefused:
        batch = submission.batch
        log.warning("database refused a batch's data; the agent is told to drop it", extra={"fields": {
            "database": self.database.value, "agent": batch.id.agent, "epoch": str(batch.id.epoch),
            "seq": batch.id.seq, "error": f"{type(error).__name__}: {error}"}})
        return BatchRefused(f"the {self.database.value} database refuses this batch's data "
                            f"({type(error).__name__}: {error}); it cannot be written and is not replayed")

    async def _write(self, group: list[_Submission]) -> list[CommitResult]:
        pool = await self.link.writer_pool()
        async with pool.acquire() as conn:
            return await WRITERS[self.database](conn, [s.batch for s in group], self.link.retention)

    def _committed(self, group: list[_Submission], results: list[CommitResult | BatchRefused],
                   seconds: float) -> None:
        self._last_progress = time.monotonic()
        if self._failing_since is not None:
            log.info("database writes recovered", extra={"fields": {
                "database": self.database.value, "after_seconds": round(self._last_progress - self._failing_since)}})
            self._failing_since = None
        self.metrics.write_seconds.labels(self.database.value).observe(seconds)
        self.metrics.batches_per_transaction.labels(self.database.value).observe(len(group))
        for submission, result in zip(group, results, strict=True):
            if isinstance(result, BatchRefused):
                _resolve(submission.future, result)
                continue
            for kind, count in result.written.items():
                self.metrics.items.labels(kind.value, self.database.value).inc(count)
            for (kind, reason), count in result.dropped.items():
                self.metrics.items_dropped.labels(kind.value, self.database.value, reason.value).inc(count)
            _resolve(submission.future, result)
            for listener in self.on_committed:
                try:
                    listener(submission.batch)
                except Exception:  # a listener's bug must never stop this database's writer
                    log.exception("commit listener failed", extra={"fields": {"database": self.database.value}})

    def _failed(self, group: list[_Submission], exc: BaseException) -> None:
        self.metrics.write_failures.labels(self.database.value).inc()
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        log.warning("database write failed; the agents keep these batches and replay them", extra={"fields": {
            "database": self.database.value, "batches": len(group), "error": f"{type(exc).__name__}: {exc}"}})
        if isinstance(exc, OSError | asyncpg.InterfaceError | TimeoutError):
            # The pool may hold dead connections; start afresh on the next attempt.
            task = asyncio.get_running_loop().create_task(self.link.close())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        for submission in group:
            _resolve(submission.future, WriteFailed(f"the {self.database.value} database did not commit: "
                                                    f"{type(exc).__name__}"))

    async def release(self, room: int) -> None:
        """Give back room taken and not used, or used by batches the writers are done with."""
        async with self._room:
            self._used -= room
            self._gauge.set(self._used)
            self._room.notify_all()


def may_park(parked_bytes: int, size: int, budget_bytes: int) -> bool:
    """Whether a batch of `size` wire bytes may wait beside those parked already: within the budget, or alone
    (a batch larger than the whole budget would otherwise never be read)."""
    return parked_bytes == 0 or parked_bytes + size <= budget_bytes


class BatchParking:
    """The server-wide byte budget for batches read and not yet admitted to a pipeline; first come, first served."""

    def __init__(self, budget_bytes: int, metrics: ServerMetrics) -> None:
        self.budget_bytes = budget_bytes
        self.parked_bytes = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._gauge = metrics.parked_batch_bytes

    async def park(self, size: int) -> None:
        """Take `size` bytes of the budget, waiting until they fit; each caller gives them back with `leave`."""
        if not self._waiting and may_park(self.parked_bytes, size, self.budget_bytes):
            self._take(size)
            return
        turn = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(turn)
        try:
            await turn[1]
        except asyncio.CancelledError:
            if turn[1].done() and not turn[1].cancelled():
                self.leave(size)  # granted just as the stream went: give it to the next in line
            else:
                self._waiting.remove(turn)
                self._grant()  # the next in line may fit where this one did not
            raise

    def leave(self, size: int) -> None:
        self.parked_bytes -= size
        self._gauge.set(self.parked_bytes)
        self._grant()

    def _take(self, size: int) -> None:
        self.parked_bytes += size
        self._gauge.set(self.parked_bytes)

    def _grant(self) -> None:
        # In arrival order: a large batch is never passed over for ever by smaller ones behind it.
        while self._waiting and may_park(self.parked_bytes, self._waiting[0][0], self.budget_bytes):
            size, granted = self._waiting.popleft()
            self._take(size)
            granted.set_result(None)


def _resolve(future: asyncio.Future[CommitResult], outcome: CommitResult | BaseException) -> None:
    # The session that awaited it may be gone (its agent disconnected); the commit still counts.
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        future.exception()  # marks it retrieved: nobody may be left to await it
    else:
        future.set_result(outcome)
