"""The million-item replay: 100 agents with a backlog drain it into both databases while they keep heartbeating.

Each agent is the real agent's data path, not a simulation of it: its own certificate and identity files
(`IdentityFiles`), its own durable queue (`DiskQueue`, SQLite with synchronous=FULL) filled with `--items` bulk-lane
items (3 performance samples to 1 event, stamped within the last hour, as after an outage), and its own
`ServerConnection` over real mTLS to a real `opsmgr server` process, with real PostgreSQL underneath (fsync on).
The connection does what it does in production: it seals batches of up to 5,000 items from the queue, keeps the
send window of unacknowledged batches, drops a batch once both databases acked it, and sends a heartbeat at the
interval the server's Welcome names (`--heartbeat-seconds`, 2 s by default so the drain holds many of them) on the
same stream, between batches. The agents run in a few worker processes (`--per-worker`, 25 by default): 100 agent
processes of 66 MB each do not fit 2 cores beside the server and PostgreSQL.

Figures:
- items/s drained into both databases: the queued items over the time from the agents' start to the last queue
  found empty (an item leaves its queue only when every database acknowledged it); then the rows are counted in
  both databases: rows == items, and each item (agent, marker) exactly once;
- heartbeat lateness during the drain, two parts: on the wire, from the agent stamping `sent_at` to the server
  recording it (the server's histogram opsmgr_heartbeat_delay_seconds; one host, one clock), and in the agent,
  how much later than its interval each heartbeat was formed (the agent used to read its queue status for each
  one on the queue's thread, behind sealing and acknowledging; it now takes the last status read);
- baselines of the same run: raw COPY of the same kind of rows (the first `--baseline-agents` agents' items)
  into one database, and one agent heartbeating alone on the idle server;
- CPU: the server's, and the machine's busy time not spent by this benchmark (another run sharing the machine).

    .venv/bin/python -m bench.bench_replay [--agents 100] [--items 10000] [--per-worker 25] [--heartbeat-seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import queue
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from tests.integration.server.client import TARGET_NAME, Credentials, stamp
from tests.integration.server.conftest import GROUP, SERVER_NAMES, ServerProcess

from bench.common import (
    Figure,
    busy_seconds,
    delay_buckets,
    largest,
    minus,
    percentile,
    probe,
    quantile,
    tree_cpu_seconds,
    within,
    write_server_files,
)
from opsmgr.agent.connection import AgentFacts, ConnectionSettings, ServerConnection
from opsmgr.agent.identity import IdentityFiles
from opsmgr.agent.queue import DiskQueue, QueueStatus
from opsmgr.db.model import Database, Retention
from opsmgr.db.routing import TABLE_COLUMNS, plan_write
from opsmgr.db.schema import prepare_database
from opsmgr.dev.postgres import LocalPostgres, free_port
from opsmgr.pki import Approval, CertificateAuthority, Identity, Role, create_ca, issue_with_new_key
from opsmgr.pki.names import CA_FILE, CERTIFICATE_FILE, KEY_FILE
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.convert import to_batch
from opsmgr.server.tls import restrict_cipher_suites

PROBE = "probe.replay.bench.test"
ENQUEUE_CHUNK = 1000  # items per enqueue call (one SQLite transaction each)
POLL_SECONDS = 0.25  # how often a worker looks at its queues' depth


def agent_name(index: int) -> str:
    return f"replay{index:03d}.bench.test"


def queued_items(index: int, count: int, now: datetime) -> list[pb.Item]:
    """One agent's backlog: 3 performance samples to 1 event, each carrying a marker unique within the agent (the
    sample's value, the event's description), so every row in a database traces back to exactly one item."""
    rng = random.Random(index)
    computer = f"Linux.Computer:{agent_name(index)}"
    items = []
    for n in range(count):
        at = stamp(now - timedelta(seconds=rng.uniform(60, 3600)))
        if n % 4 == 0:
            items.append(pb.Item(event=pb.Event(
                logged_at=at, object_key=computer, channel="syslog", source="sshd", number=4625, level=3,
                description=f"Failed password for invalid user admin from 192.0.2.{rng.randint(1, 254)} (#{n})")))
        else:
            items.append(pb.Item(performance=pb.PerformanceSample(
                sampled_at=at, object_key=computer, object_name="Processor", counter_name="% Processor Time",
                instance_name=str(n % 4), value=float(n))))
    return items


@dataclass(frozen=True)
class ReplaySpec:
    index: int
    port: int
    ca_pem: bytes
    agents: list[tuple[int, bytes, bytes]]  # agent index, key PEM, certificate PEM
    items: int
    folder: Path
    heartbeat_seconds: float


@dataclass
class AgentOutcome:
    name: str
    drained_at: float | None = None  # wall time the queue was first found empty
    streams_opened: int = 0
    heartbeats_sent: int = 0
    batches_sent: int = 0
    rejected_batches: int = 0
    last_error: str | None = None
    beat_lateness: list[tuple[float, float]] = field(default_factory=list)  # wall time, seconds past the interval


@dataclass
class ReplayWorkerResult:
    index: int
    agents: list[AgentOutcome]
    loop_lag: list[tuple[float, float]]  # wall time, seconds late
    rss_bytes: int


class TimedQueue(DiskQueue):
    """The real queue, noting when each status is taken: Hello's, then the agent takes one right before forming
    each heartbeat (`recent_status`, the last one read; before it, `status()` on the queue's thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_returned: list[float] = []

    async def status(self) -> QueueStatus:
        found = await super().status()
        self.status_returned.append(time.monotonic())
        return found

    def recent_status(self) -> QueueStatus:
        found = super().recent_status()
        self.status_returned.append(time.monotonic())
        return found

    async def depth(self) -> int:
        """For the benchmark's own polling, which must not count as a heartbeat."""
        return (await super().status()).depth_items


class ReplayWorker:
    """One worker process's agents: fill their queues, wait for the go, replay, report."""

    def __init__(self, spec: ReplaySpec, reports: multiprocessing.Queue[Any], go: MpEvent, stop: MpEvent) -> None:
        self.spec, self.reports, self.go, self.stop = spec, reports, go, stop
        self.loop_lag: list[tuple[float, float]] = []
        self.identities: dict[int, IdentityFiles] = {}

    async def run(self) -> None:
        queues = await asyncio.gather(*(self._prepare(index, key, certificate)
                                        for index, key, certificate in self.spec.agents))
        self.reports.put(("filled", self.spec.index))
        await asyncio.to_thread(self.go.wait)
        lag = asyncio.create_task(self._measure_loop_lag())
        agents_stop = asyncio.Event()
        outcomes = [AgentOutcome(agent_name(index)) for index, _, _ in self.spec.agents]
        connections = [self._connection(index, agent_queue) for (index, _, _), agent_queue
                       in zip(self.spec.agents, queues, strict=True)]
        running = [asyncio.create_task(connection.run(agents_stop)) for connection in connections]
        started = time.monotonic()
        while not self.stop.is_set():
            remaining = 0
            for outcome, agent_queue in zip(outcomes, queues, strict=True):
                if outcome.drained_at is None:
                    depth = await agent_queue.depth()
                    remaining += depth
                    if depth == 0:
                        outcome.drained_at = time.time()
            self.reports.put(("progress", self.spec.index, remaining))
            await asyncio.sleep(POLL_SECONDS)
        agents_stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        lag.cancel()
        await asyncio.gather(lag, return_exceptions=True)
        for outcome, connection, agent_queue in zip(outcomes, connections, queues, strict=True):
            state = connection.state
            outcome.streams_opened, outcome.heartbeats_sent = state.streams_opened, state.heartbeats_sent
            outcome.batches_sent, outcome.rejected_batches = state.batches_sent, state.rejected_batches
            outcome.last_error = state.last_error
            interval = self.spec.heartbeat_seconds
            returned = [t for t in agent_queue.status_returned if t >= started]
            # The first status is Hello's: the first heartbeat comes an interval after the Welcome, so that pair
            # would count the TLS handshake and the server's answer. Every later one forms a heartbeat `interval`
            # after the one before.
            offset = time.time() - time.monotonic()
            outcome.beat_lateness = [(later + offset, max(0.0, later - earlier - interval))
                                     for earlier, later in itertools.pairwise(returned[1:])]
            await agent_queue.close()
        self.reports.put(("done", ReplayWorkerResult(self.spec.index, outcomes, self.loop_lag,
                                                     psutil.Process().memory_info().rss)))

    async def _prepare(self, index: int, key_pem: bytes, certificate_pem: bytes) -> TimedQueue:
        home = self.spec.folder / agent_name(index)
        identity = home / "identity"
        identity.mkdir(parents=True)
        (identity / KEY_FILE).write_bytes(key_pem)
        (identity / CERTIFICATE_FILE).write_bytes(certificate_pem)
        (identity / CA_FILE).write_bytes(self.spec.ca_pem)
        # Checked before the go, as `opsmgr agent` checks its identity before it connects: the identity helper
        # process then runs again only if the files change, never during the replay.
        self.identities[index] = IdentityFiles(identity)
        await asyncio.to_thread(self.identities[index].load)
        agent_queue = await TimedQueue.open(home / "queue.sqlite")
        assert isinstance(agent_queue, TimedQueue)
        items = queued_items(index, self.spec.items, datetime.now(UTC))
        for start in range(0, len(items), ENQUEUE_CHUNK):
            await agent_queue.enqueue(items[start:start + ENQUEUE_CHUNK])
        return agent_queue

    def _connection(self, index: int, agent_queue: DiskQueue) -> ServerConnection:
        settings = ConnectionSettings(primary=f"127.0.0.1:{self.spec.port}", tls_server_name=TARGET_NAME,
                                      renew=False, heartbeat_seconds=None)
        connection = ServerConnection(settings, AgentFacts(agent_name(index)), agent_queue, self.identities[index])
        return connection

    async def _measure_loop_lag(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.2)
            self.loop_lag.append((time.time(), time.perf_counter() - before - 0.2))


def run_replay_worker(spec: ReplaySpec, reports: multiprocessing.Queue[Any], go: MpEvent, stop: MpEvent) -> None:
    restrict_cipher_suites()  # before grpc is first used, as the server and agents do
    asyncio.run(ReplayWorker(spec, reports, go, stop).run())


@dataclass
class ReplayFigures:
    items: int
    drain_seconds: float
    drained_agents: int
    rows: dict[str, tuple[int, int]]  # database -> rows, distinct (agent, marker)
    copy_rows_per_second: float
    baseline_delay: list[tuple[float, float]]
    delay: list[tuple[float, float]]
    beat_lateness: list[float]
    heartbeats_handled: float
    streams_opened: int
    rejected_batches: int
    alerts_raised: int
    server_cpu: float
    others_cpu: float
    client_lag_p99: float
    worker_rss: list[int]
    errors: list[str]

    @property
    def items_per_second(self) -> float:
        return self.items / self.drain_seconds if self.drain_seconds else 0.0


RESET = "TRUNCATE events, performance_samples, state_changes, committed_batches, late_data_drops"


async def count_rows(dsn: str) -> tuple[int, int]:
    """Rows in the tables the backlog fills, and how many distinct items they are (agent and marker)."""
    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetchrow("SELECT count(*), count(DISTINCT (agent, description)) FROM events")
        samples = await conn.fetchrow("SELECT count(*), count(DISTINCT (agent, value)) FROM performance_samples")
    finally:
        await conn.close()
    return int(events[0]) + int(samples[0]), int(events[1]) + int(samples[1])


async def raw_copy_rate(dsn: str, agents: int, items: int) -> float:
    """The same kind of rows, formed as the writers form them, COPYed into one database: rows/s."""
    now, retention = datetime.now(UTC), Retention()
    rows: dict[str, list[tuple[object, ...]]] = {}
    for index in range(agents):
        backlog = queued_items(index, items, now)
        for seq, start in enumerate(range(0, len(backlog), 5000)):
            wire = pb.DataBatch(epoch="00000000-0000-4000-8000-000000000000", seq=seq, lane=pb.LANE_BULK,
                                items=backlog[start:start + 5000])
            planned = plan_write(to_batch(agent_name(index), wire), Database.OPERATIONAL, retention, now)
            for table, table_rows in planned.rows.items():
                rows.setdefault(table, []).extend(table_rows)
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_database(conn, Database.OPERATIONAL, retention, now=now)
        await conn.execute(RESET)
        started = time.perf_counter()
        for table, table_rows in rows.items():
            await conn.copy_records_to_table(table, records=table_rows, columns=TABLE_COLUMNS[table])
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return sum(len(r) for r in rows.values()) / elapsed


class ReplayRun:
    def __init__(self, args: argparse.Namespace, postgres: LocalPostgres, folder: Path) -> None:
        self.args, self.postgres, self.folder = args, postgres, folder
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: gRPC's core does not survive fork
        self.go, self.stop = self.ctx.Event(), self.ctx.Event()
        self.reports: multiprocessing.Queue[Any] = self.ctx.Queue()
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self.filled: set[int] = set()
        self.remaining: dict[int, int] = {}
        self.results: dict[int, ReplayWorkerResult] = {}
        self.last_print = 0.0

    def _drain_reports(self, block_seconds: float) -> None:
        with contextlib.suppress(queue.Empty):
            report = self.reports.get(timeout=block_seconds)
            while True:
                if report[0] == "filled":
                    self.filled.add(report[1])
                elif report[0] == "progress":
                    self.remaining[report[1]] = report[2]
                else:
                    self.results[report[1].index] = report[1]
                report = self.reports.get_nowait()

    async def _wait(self, done: Any, limit_seconds: float, what: str) -> None:
        deadline = time.monotonic() + limit_seconds
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {limit_seconds:.0f} s")
            if any(not worker.is_alive() for worker in self.workers) and not self.stop.is_set():
                raise RuntimeError(f"a replay worker died before {what}")
            await asyncio.to_thread(self._drain_reports, 0.5)

    def _server(self, issued: list[tuple[bytes, bytes]], ca: CertificateAuthority, now: datetime) -> ServerProcess:
        server_folder = self.folder / "server"
        server_folder.mkdir()
        write_server_files(server_folder, ca, [*(agent_name(i) for i in range(self.args.agents)), PROBE], now)
        agent_port, metrics_port = free_port(), free_port()
        config = {"group": GROUP, "name": SERVER_NAMES.identity().name,
                  "listen": {"address": "127.0.0.1", "port": agent_port},
                  "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt"},
                  "databases": {"operational_dsn": self.postgres.dsn("operational"),
                                "warehouse_dsn": self.postgres.dsn("warehouse")},
                  "metrics": {"address": "127.0.0.1", "port": metrics_port},
                  "directory": {"file": str(server_folder / "directory.yaml")}, "log": {"level": "WARNING"},
                  "heartbeat_interval_seconds": self.args.heartbeat_seconds}
        return ServerProcess(server_folder, config, agent_port, metrics_port)

    def _start_workers(self, port: int, issued: list[tuple[bytes, bytes]], ca_pem: bytes) -> None:
        args = self.args
        for index, start in enumerate(range(0, args.agents, args.per_worker)):
            spec = ReplaySpec(index, port, ca_pem,
                              [(i, *issued[i]) for i in range(start, min(args.agents, start + args.per_worker))],
                              args.items, self.folder / f"worker{index}", args.heartbeat_seconds)
            worker = self.ctx.Process(target=run_replay_worker, args=(spec, self.reports, self.go, self.stop),
                                      name=f"replay-worker-{index}")
            worker.start()
            self.workers.append(worker)

    def _drained(self, started: float) -> bool:
        if time.perf_counter() - self.last_print >= 10:
            self.last_print = time.perf_counter()
            print(f"  {self.last_print - started:.0f} s: {sum(self.remaining.values())} items queued", flush=True)
        return len(self.remaining) == len(self.workers) and not any(self.remaining.values())

    async def run(self) -> ReplayFigures:
        args = self.args
        now = datetime.now(UTC)
        ca = create_ca(GROUP, now)
        issued = []
        for name in [*(agent_name(i) for i in range(args.agents)), PROBE]:
            identity = issue_with_new_key(ca, Approval(Identity.of(GROUP, Role.AGENT, name), "bench", now), now)
            issued.append((identity.key_pem(), identity.certificate_pem()))
        server = self._server(issued, ca, now)
        agent_port = server.agent_port
        try:
            await asyncio.to_thread(server.start, 120)
            await probe(agent_port, Credentials(*issued[-1], ca.certificate_pem()), args.probe_beats)
            baseline = delay_buckets(server.metrics())
            print(f"  filling {args.agents} queues with {args.items} items each", flush=True)
            fill_started = time.perf_counter()
            self._start_workers(agent_port, issued, ca.certificate_pem())
            await self._wait(lambda: len(self.filled) == len(self.workers), 1200, "every queue was filled")
            print(f"  queues filled in {time.perf_counter() - fill_started:.1f} s; raw COPY baseline", flush=True)
            copy_rate = await raw_copy_rate(self.postgres.dsn("raw"), min(args.baseline_agents, args.agents),
                                            args.items)
            total = args.agents * args.items
            assert server.process is not None
            # This process's tree holds the server and the workers; pg_ctl daemonized PostgreSQL out of it.
            ours = [os.getpid(), *([self.postgres.pid] if self.postgres.pid is not None else [])]
            before_delay = delay_buckets(server.metrics())
            cpu_ours, cpu_all = tree_cpu_seconds(ours), busy_seconds(psutil.cpu_times())
            cpu_server = tree_cpu_seconds([server.process.pid])
            started_wall, started = time.time(), time.perf_counter()
            self.go.set()
            await self._wait(lambda: self._drained(started), args.drain_timeout, "every queue drained")
            elapsed_probe = time.perf_counter() - started
            others = (busy_seconds(psutil.cpu_times()) - cpu_all) - (tree_cpu_seconds(ours) - cpu_ours)
            server_cpu = tree_cpu_seconds([server.process.pid]) - cpu_server
            window = minus(delay_buckets(server.metrics()), before_delay)
            health = server.healthz() or {}
            self.stop.set()
            await self._wait(lambda: len(self.results) == len(self.workers), 120, "every worker reported")
        finally:
            self.stop.set()
            self.go.set()
            for worker in self.workers:
                worker.join(timeout=60)
                if worker.is_alive():
                    worker.kill()
            server.stop()
        outcomes = [outcome for result in self.results.values() for outcome in result.agents]
        last_drained = max((o.drained_at for o in outcomes if o.drained_at is not None), default=time.time())
        drain_seconds = last_drained - started_wall
        rows = {database: await count_rows(self.postgres.dsn(database)) for database in ("operational", "warehouse")}
        lags = [lag for result in self.results.values() for at, lag in result.loop_lag if at <= last_drained]
        return ReplayFigures(
            items=total, drain_seconds=drain_seconds,
            drained_agents=sum(o.drained_at is not None for o in outcomes), rows=rows,
            copy_rows_per_second=copy_rate, baseline_delay=baseline, delay=window,
            beat_lateness=[late for o in outcomes for at, late in o.beat_lateness if at <= last_drained],
            heartbeats_handled=window[-1][1] if window else 0.0,
            streams_opened=sum(o.streams_opened for o in outcomes),
            rejected_batches=sum(o.rejected_batches for o in outcomes),
            alerts_raised=int(health.get("alerts_raised", -1)), server_cpu=server_cpu / elapsed_probe,
            others_cpu=others / elapsed_probe, client_lag_p99=percentile(lags, 0.99),
            worker_rss=[result.rss_bytes for result in self.results.values()],
            errors=sorted({o.last_error for o in outcomes if o.last_error}))


def report(args: argparse.Namespace, runs: list[ReplayFigures], postgres: LocalPostgres) -> None:
    def figure(name: str, unit: str, values: list[float]) -> str:
        return Figure(name, unit, tuple(values)).line()

    ms = 1000.0
    print(f"{args.agents} agents x {args.items} queued bulk items (3 performance samples : 1 event), real agent "
          f"queues and connections in {len(runs[0].worker_rss)} worker processes, heartbeat every "
          f"{args.heartbeat_seconds} s, fsync on, PostgreSQL at {postgres.bin_dir}")
    print(f"{os.cpu_count()} CPUs shared by the server, PostgreSQL and the agents; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    for run in runs:
        print(f"  run: {run.drained_agents} of {args.agents} queues drained, {run.streams_opened} streams opened, "
              f"{run.rejected_batches} batches rejected, watcher alerts raised {run.alerts_raised}, "
              f"agent errors {run.errors or 'none'}; rows (total, distinct items): {run.rows}; "
              f"worker RSS {[round(r / 2**20) for r in run.worker_rss]} MiB")
        for database, (rows, distinct) in run.rows.items():
            verdict = "exactly once" if rows == distinct == run.items else "MISMATCH"
            print(f"  {database}: {rows} rows for {run.items} items, {distinct} distinct: {verdict}")
    print(figure("baseline: raw COPY of the same kind of rows into one database", "rows/s",
                 [r.copy_rows_per_second for r in runs]))
    print(figure("time to drain every queue", "s", [r.drain_seconds for r in runs]))
    print(figure("items drained into both databases (target >= 20,000)", "items/s",
                 [r.items_per_second for r in runs]))
    print(figure("ratio drained / raw COPY into one database", "", [r.items_per_second / r.copy_rows_per_second
                                                                     for r in runs]))
    print(figure("baseline: heartbeat delay p50, one agent alone on the idle server", "ms",
                 [quantile(r.baseline_delay, 0.5) * ms for r in runs]))
    print(figure("heartbeat delay p50 during the drain (agent stamp -> server)", "ms",
                 [quantile(r.delay, 0.5) * ms for r in runs]))
    print(figure("heartbeat delay p99 during the drain", "ms", [quantile(r.delay, 0.99) * ms for r in runs]))
    print(figure("heartbeat delay max during the drain (bucket bound)", "ms", [largest(r.delay) * ms for r in runs]))
    print(figure("heartbeats within 2 s of their stamp (target 100)", "%", [within(r.delay, 2.0) * 100 for r in runs]))
    print(figure("heartbeats the server recorded during the drain", "", [r.heartbeats_handled for r in runs]))
    print(figure("heartbeat formed late in the agent, p50", "ms", [percentile(r.beat_lateness, 0.5) * ms
                                                                   for r in runs]))
    print(figure("heartbeat formed late in the agent, p99", "ms", [percentile(r.beat_lateness, 0.99) * ms
                                                                   for r in runs]))
    print(figure("heartbeat formed late in the agent, max", "ms", [max(r.beat_lateness, default=0.0) * ms
                                                                   for r in runs]))
    print(figure("server process CPU during the drain", "% of one CPU", [r.server_cpu * 100 for r in runs]))
    print(figure("agent workers' loop lag p99", "ms", [r.client_lag_p99 * ms for r in runs]))
    print(figure("CPU busy outside this benchmark (another run on the machine)", "CPUs",
                 [r.others_cpu for r in runs]))


async def main(args: argparse.Namespace) -> None:
    restrict_cipher_suites()
    pg_folder = Path(tempfile.mkdtemp(prefix="opsmgr-bench-replay-pg-"))
    # Its own folder: LocalPostgres hands it to the postgres account when we run as root.
    postgres = LocalPostgres(pg_folder, fsync=True)
    postgres.start()
    runs = []
    try:
        for number in range(args.runs):
            print(f"run {number + 1} of {args.runs}", flush=True)
            admin = await asyncpg.connect(postgres.dsn())
            for database in ("operational", "warehouse", "raw"):
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
                await admin.execute(f'CREATE DATABASE "{database}"')
            await admin.close()
            folder = Path(tempfile.mkdtemp(prefix="opsmgr-bench-replay-"))
            try:
                runs.append(await ReplayRun(args, postgres, folder).run())
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        postgres.stop()
        shutil.rmtree(pg_folder, ignore_errors=True)
    report(args, runs, postgres)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100, help="agents, each with its own queue and stream")
    parser.add_argument("--items", type=int, default=10_000, help="items queued per agent before they connect")
    parser.add_argument("--per-worker", type=int, default=25, help="agents per worker process")
    parser.add_argument("--heartbeat-seconds", type=int, default=2, help="the interval the server's Welcome names")
    parser.add_argument("--baseline-agents", type=int, default=10, help="agents whose items the raw COPY takes")
    parser.add_argument("--probe-beats", type=int, default=50, help="the lone agent's heartbeats (baseline)")
    parser.add_argument("--drain-timeout", type=float, default=1200.0, help="give up after this many seconds")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh server and fresh databases")
    asyncio.run(main(parser.parse_args()))
