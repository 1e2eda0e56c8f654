"""A fleet of simulated agents on one real `opsmgr server` over real mTLS: memory per agent, heartbeat delay, ingest.

Every simulated agent has its own certificate (issued from one CA at ~0.15 ms each, so nothing is cached on disk),
its own TCP + TLS connection and Connect stream. It says Hello, heartbeats at the interval the server's Welcome
names, and once per batch interval sends a bulk batch (10 performance samples, plus 1-5 events in 3 intervals of
10) and, in 1 interval of 50, a priority batch (a state change and an alert). Agents are spread over worker
processes (`--per-worker`, 2,500 by default): mTLS identity belongs to a connection, so agents cannot share one.
One process can hold 10,000 agents (1.4 GiB, one gRPC channel each), but its loop then runs >100 ms late at p99
and its own lateness would be charged to the server; 2,500 per process keep it near 10 ms. Workers run with the
cyclic garbage collector off, for the same reason.

Figures of each run (each run starts a fresh server; PostgreSQL is shared by the runs):
- server RSS (psutil) once a lone probe agent came and went, then with every agent connected, then at the end of
  the steady window -> KB per agent, from the larger of the two;
- heartbeat delay: from the simulated agent stamping `sent_at` right before `call.write()` to the server recording
  the heartbeat in its presence ledger (the server's histogram opsmgr_heartbeat_delay_seconds; one host, one clock).
  It covers the client's gRPC send, TLS, the server's gRPC core and the wait in the server's event loop. p50 and
  p99 are interpolated within buckets, so "share within 20 ms" (a bucket bound) is the exact test of the target.
  Baseline, measured in the same run: the lone probe agent's heartbeats on the idle server;
- batch ack round trip, client side: from writing a batch to the last database's ack, p50 and p99;
- items/s committed to both databases (acks seen by the agents) during the steady window;
- CPU: the server's, and the machine's busy time not spent by this benchmark (another run sharing the machine).

    .venv/bin/python -m bench.bench_fleet [--agents 1000] [--per-worker 2500] [--heartbeat-seconds 60]
        [--batch-seconds 60] [--steady-seconds 60] [--runs 1] [--no-fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import queue
import random
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
from grpc import aio
from tests.integration.server.client import SETTLED, AgentStream, Credentials, channel, owed, stamp
from tests.integration.server.conftest import GROUP, SERVER_NAMES, ServerProcess

from bench.common import (
    Figure,
    busy_seconds,
    delay_buckets,
    minus,
    percentile,
    probe,
    quantile,
    tree_cpu_seconds,
    within,
    write_server_files,
)
from opsmgr.dev.postgres import LocalPostgres, free_port
from opsmgr.pki import Approval, Identity, Role, create_ca, issue_with_new_key
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.tls import restrict_cipher_suites

PROBE = "probe.bench.test"
CONNECT_ATTEMPTS = 3


def agent_name(index: int) -> str:
    return f"agent{index:05d}.bench.test"


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    port: int
    ca_pem: bytes
    agents: list[tuple[str, bytes, bytes]]  # name, key PEM, certificate PEM
    batch_seconds: float
    connect_concurrency: int


@dataclass
class WorkerResult:
    index: int
    connected: int = 0
    failed: int = 0
    streams_lost: int = 0
    heartbeats: int = 0
    acks: list[tuple[float, float, int]] = field(default_factory=list)  # wall time settled, round trip s, items
    unsettled_acks: dict[str, int] = field(default_factory=dict)  # outcome name -> count
    loop_lag: list[tuple[float, float]] = field(default_factory=list)  # wall time, seconds late
    rss_bytes: int = 0


class Fleet:
    """One worker process's agents, on one event loop."""

    def __init__(self, spec: WorkerSpec, reports: multiprocessing.Queue[Any], stop: MpEvent) -> None:
        self.spec = spec
        self.reports = reports
        self.stop = stop
        self.result = WorkerResult(spec.index)
        self.stopping = asyncio.Event()
        self.connecting = asyncio.Semaphore(spec.connect_concurrency)

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch_stop())
        lag = asyncio.create_task(self._measure_loop_lag())
        await asyncio.gather(*(self._agent(*agent) for agent in self.spec.agents))
        for task in (watcher, lag):
            task.cancel()
        await asyncio.gather(watcher, lag, return_exceptions=True)
        self.result.rss_bytes = psutil.Process().memory_info().rss
        self.reports.put(("done", self.result))

    async def _watch_stop(self) -> None:
        last_report = 0.0
        while not self.stop.is_set():
            await asyncio.sleep(0.2)
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                self.reports.put(("progress", self.spec.index, self.result.connected, self.result.failed,
                                  psutil.Process().memory_info().rss))
        self.stopping.set()

    async def _measure_loop_lag(self) -> None:
        """How late this worker's own loop wakes up: a busy client delays what it sends, not the server."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.2)
            self.result.loop_lag.append((time.time(), time.perf_counter() - before - 0.2))

    async def _connect(self, credentials: Credentials) -> tuple[aio.Channel, AgentStream, pb.Welcome] | None:
        for attempt in range(CONNECT_ATTEMPTS):
            async with self.connecting:
                chan = channel(self.spec.port, credentials)
                try:
                    stream = AgentStream(chan)
                    return chan, stream, await stream.hello()
                except (grpc.RpcError, ConnectionError, TimeoutError):
                    await chan.close()
            await asyncio.sleep(1.0 + attempt)
        return None

    async def _agent(self, name: str, key_pem: bytes, certificate_pem: bytes) -> None:
        rng = random.Random(name)
        connected = await self._connect(Credentials(key_pem, certificate_pem, self.spec.ca_pem))
        if connected is None:
            self.result.failed += 1
            return
        chan, stream, welcome = connected
        self.result.connected += 1
        inflight: dict[int, tuple[float, set[int], int]] = {}
        reader = asyncio.create_task(self._read_acks(stream, inflight))
        loop = asyncio.get_running_loop()
        beat_every, batch_every = float(welcome.config.heartbeat_interval_seconds), self.spec.batch_seconds
        # Random phases, as a fleet that started over hours: no synchronized bursts.
        next_beat, next_batch = loop.time() + rng.uniform(0, beat_every), loop.time() + rng.uniform(0, batch_every)
        epoch, beat_seq, batch_seq = str(uuid.uuid4()), 0, 0
        try:
            while not self.stopping.is_set() and not reader.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(next_beat, next_batch) - loop.time())):
                        await self.stopping.wait()
                if self.stopping.is_set() or reader.done():
                    break
                now = loop.time()
                if now >= next_beat:
                    beat_seq += 1
                    beat = pb.Heartbeat(seq=beat_seq)
                    beat.sent_at.GetCurrentTime()
                    await stream.send(pb.AgentMessage(heartbeat=beat))
                    self.result.heartbeats += 1
                    next_beat += beat_every
                if now >= next_batch:
                    for batch in self._batches(rng, name, epoch, batch_seq):
                        batch_seq += 1
                        inflight[batch.seq] = (time.perf_counter(), set(owed(batch)), len(batch.items))
                        await stream.send(pb.AgentMessage(batch=batch))
                    next_batch += batch_every
            if reader.done():
                self.result.streams_lost += 1
            else:
                await stream.send(pb.AgentMessage(goodbye=pb.Goodbye(reason="benchmark over")))
                await stream.call.done_writing()
        except (grpc.RpcError, asyncio.InvalidStateError):
            self.result.streams_lost += 1
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await chan.close()

    @staticmethod
    def _batches(rng: random.Random, name: str, epoch: str, seq: int) -> list[pb.DataBatch]:
        """One batch interval's worth: the bulk batch always, a priority batch rarely."""
        at, computer = stamp(datetime.now(UTC)), f"Linux.Computer:{name}"
        bulk = pb.DataBatch(epoch=epoch, seq=seq, lane=pb.LANE_BULK)
        for obj, counter, instance in (("Processor", "% Processor Time", "_Total"),
                                       ("Processor", "% Processor Time", "0"),
                                       ("Processor", "% Processor Time", "1"),
                                       ("Memory", "% Used Memory", ""), ("Memory", "Available MBytes", ""),
                                       ("Logical Disk", "% Free Space", "/"), ("Logical Disk", "% Free Space", "/var"),
                                       ("Logical Disk", "Disk Transfers/sec", "sda"),
                                       ("Network Adapter", "Bytes Total/sec", "eth0"), ("System", "Load Average", "")):
            bulk.items.add().performance.CopyFrom(pb.PerformanceSample(
                sampled_at=at, object_key=computer, object_name=obj, counter_name=counter, instance_name=instance,
                value=rng.random() * 100))
        if rng.random() < 0.3:
            for n in range(rng.randint(1, 5)):
                bulk.items.add().event.CopyFrom(pb.Event(
                    logged_at=at, object_key=computer, channel="syslog", source="sshd", number=4625, level=3,
                    description=f"Failed password for invalid user admin{n} from 192.0.2.{rng.randint(1, 254)}"))
        batches = [bulk]
        if rng.random() < 0.02:
            priority = pb.DataBatch(epoch=epoch, seq=seq + 1, lane=pb.LANE_PRIORITY)
            priority.items.add().state.CopyFrom(pb.StateChange(changed_at=at, object_key=f"{computer}:/var",
                                                               monitor="Linux.DiskSpace", old_state=1, new_state=3))
            priority.items.add().alert.CopyFrom(pb.Alert(raised_at=at, object_key=f"{computer}:/var",
                                                         source="Linux.DiskFull", name="Disk full",
                                                         description="/var is 95 % full", severity=2, priority=1))
            batches.append(priority)
        return batches

    async def _read_acks(self, stream: AgentStream, inflight: dict[int, tuple[float, set[int], int]]) -> None:
        while True:
            reply = await stream.call.read()
            if reply is aio.EOF:
                return
            if reply.WhichOneof("body") != "ack" or reply.ack.seq not in inflight:
                continue
            ack = reply.ack
            sent, awaited, items = inflight[ack.seq]
            if ack.outcome not in SETTLED:
                outcome = pb.Ack.Outcome.Name(ack.outcome)
                self.result.unsettled_acks[outcome] = self.result.unsettled_acks.get(outcome, 0) + 1
                items = 0  # a real agent would replay it; here it counts neither as committed nor as a round trip
                inflight[ack.seq] = (sent, awaited, items)
            awaited.discard(ack.database)
            if not awaited:
                del inflight[ack.seq]
                if items:
                    self.result.acks.append((time.time(), time.perf_counter() - sent, items))


def run_worker(spec: WorkerSpec, reports: multiprocessing.Queue[Any], stop: MpEvent) -> None:
    restrict_cipher_suites()  # before grpc is first used, as the server and agents do
    # A full collection of 2,500 agents' objects stalls this loop for up to 2 s, which would delay heartbeats
    # already stamped and be blamed on the server; the fleet's garbage is freed by reference counting anyway.
    gc.disable()
    asyncio.run(Fleet(spec, reports, stop).run())


@dataclass
class RunFigures:
    agents: int
    connected: int
    failed: int
    connect_seconds: float
    server_connected_agents: int
    rss_idle: int
    rss_connected: int
    rss_end: int
    client_rss: list[int]
    baseline_delay: list[tuple[float, float]]
    delay: list[tuple[float, float]]
    ack_round_trips: list[float]
    items_per_second: float
    heartbeats_per_second: float
    server_cpu: float  # share of one CPU over the steady window
    others_cpu: float  # CPUs' worth busy outside this benchmark over the steady window
    client_lag_p99: float
    streams_lost: int
    unsettled: dict[str, int]

    @property
    def kb_per_agent(self) -> float:
        return (max(self.rss_connected, self.rss_end) - self.rss_idle) / 1024 / max(1, self.connected)


def print_slow_callbacks(log: str, count: int = 12) -> None:
    """The server's event loop stalls asyncio's debug mode saw, longest first, grouped by what ran."""
    found = re.findall(r"Executing (<.*?>) took (\d+\.\d+) seconds", log)
    total: dict[str, list[float]] = {}
    for what, seconds in found:
        key = re.sub(r" at 0x[0-9a-f]+| created at .*|\(\)>.*", "", what)[:160]
        total.setdefault(key, []).append(float(seconds))
    print(f"  server loop stalls >= 100 ms seen by asyncio debug: {len(found)}")
    for key, times in sorted(total.items(), key=lambda kv: -max(kv[1]))[:count]:
        print(f"    {len(times)} x, longest {max(times) * 1000:.0f} ms: {key}")


@dataclass(frozen=True)
class Material:
    """What every run reuses: agent names with their key and certificate, and the server's files."""

    names: list[str]
    issued: list[tuple[bytes, bytes]]
    ca_pem: bytes
    server_files: Path


class FleetRun:
    """One run: a fresh server, the lone probe, the fleet's workers, the steady window."""

    def __init__(self, args: argparse.Namespace, postgres: LocalPostgres, material: Material) -> None:
        self.args, self.postgres, self.material = args, postgres, material
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: gRPC's core does not survive fork
        self.folder = Path(tempfile.mkdtemp(prefix="opsmgr-bench-fleet-"))
        for item in material.server_files.iterdir():
            shutil.copy(item, self.folder / item.name)
        agent_port, metrics_port = free_port(), free_port()
        config = {"group": GROUP, "name": SERVER_NAMES.identity().name,
                  "listen": {"address": "127.0.0.1", "port": agent_port},
                  "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt"},
                  "databases": {"operational_dsn": postgres.dsn("operational"),
                                "warehouse_dsn": postgres.dsn("warehouse")},
                  "metrics": {"address": "127.0.0.1", "port": metrics_port},
                  "directory": {"file": str(self.folder / "directory.yaml")}, "log": {"level": "WARNING"},
                  "heartbeat_interval_seconds": args.heartbeat_seconds}
        self.server = ServerProcess(self.folder, config, agent_port, metrics_port)
        if args.asyncio_debug:
            self.server.env = {"PYTHONASYNCIODEBUG": "1"}  # asyncio then logs every callback that ran >= 100 ms
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self.stop = self.ctx.Event()
        self.reports: multiprocessing.Queue[Any] = self.ctx.Queue()
        self.progress: dict[int, tuple[int, int, int]] = {}  # worker -> connected, failed, RSS
        self.results: dict[int, WorkerResult] = {}

    async def run(self) -> RunFigures:
        try:
            return await self._measure()
        finally:
            self.stop.set()
            for worker in self.workers:
                worker.join(timeout=30)
                if worker.is_alive():
                    worker.kill()
            self.server.stop()
            if self.args.asyncio_debug:
                print_slow_callbacks(self.server.log_path.read_text(errors="replace"))
            shutil.rmtree(self.folder, ignore_errors=True)

    def _drain(self, block_seconds: float) -> None:
        with contextlib.suppress(queue.Empty):
            report = self.reports.get(timeout=block_seconds)
            while True:
                if report[0] == "progress":
                    self.progress[report[1]] = report[2:]
                else:
                    self.results[report[1].index] = report[1]
                report = self.reports.get_nowait()

    def _start_workers(self) -> None:
        material, args = self.material, self.args
        agents = [(material.names[i], *material.issued[i]) for i in range(args.agents)]
        for index, start in enumerate(range(0, len(agents), args.per_worker)):
            spec = WorkerSpec(index, self.server.agent_port, material.ca_pem, agents[start:start + args.per_worker],
                              args.batch_seconds, args.connect_concurrency)
            worker = self.ctx.Process(target=run_worker, args=(spec, self.reports, self.stop),
                                      name=f"fleet-worker-{index}")
            worker.start()
            self.workers.append(worker)

    async def _connect_fleet(self) -> float:
        started = time.perf_counter()
        self._start_workers()
        deadline = time.monotonic() + self.args.connect_timeout
        while time.monotonic() < deadline:
            await asyncio.to_thread(self._drain, 1.0)
            done = sum(connected + failed for connected, failed, _ in self.progress.values())
            if done >= self.args.agents and len(self.progress) == len(self.workers):
                break
            if any(not worker.is_alive() for worker in self.workers):
                raise RuntimeError("a fleet worker died while connecting")
        return time.perf_counter() - started

    async def _measure(self) -> RunFigures:
        args, server = self.args, self.server
        await asyncio.to_thread(server.start, 120)
        probe_key, probe_certificate = self.material.issued[-1]
        await probe(server.agent_port, Credentials(probe_key, probe_certificate, self.material.ca_pem),
                    args.probe_beats)
        baseline = delay_buckets(server.metrics())
        await asyncio.sleep(1.0)
        rss_idle = server.rss_bytes()
        connect_seconds = await self._connect_fleet()
        connected = sum(c for c, _, _ in self.progress.values())
        print(f"  {connected} of {args.agents} agents connected in {connect_seconds:.1f} s "
              f"({len(self.workers)} worker processes); steady window {args.steady_seconds:.0f} s", flush=True)
        await asyncio.sleep(args.settle_seconds)  # past the connect storm's backlog of first batches
        rss_connected, health = server.rss_bytes(), server.healthz() or {}
        assert server.process is not None
        # This process's tree holds the server and the workers; pg_ctl daemonized PostgreSQL out of it.
        ours = [os.getpid(), *([self.postgres.pid] if self.postgres.pid is not None else [])]
        before_delay, window_start = delay_buckets(server.metrics()), time.time()
        cpu_ours, cpu_all = tree_cpu_seconds(ours), busy_seconds(psutil.cpu_times())
        cpu_server = tree_cpu_seconds([server.process.pid])
        await asyncio.sleep(args.steady_seconds)
        window_end = time.time()
        elapsed = window_end - window_start
        others = (busy_seconds(psutil.cpu_times()) - cpu_all) - (tree_cpu_seconds(ours) - cpu_ours)
        server_cpu = (tree_cpu_seconds([server.process.pid]) - cpu_server) / elapsed
        window_delay, rss_end = minus(delay_buckets(server.metrics()), before_delay), server.rss_bytes()
        self.stop.set()
        deadline = time.monotonic() + 120
        while len(self.results) < len(self.workers) and time.monotonic() < deadline:
            await asyncio.to_thread(self._drain, 1.0)
        results = self.results.values()
        acks = [(rtt, items) for result in results for at, rtt, items in result.acks
                if window_start <= at <= window_end]
        lags = [lag for result in results for at, lag in result.loop_lag if window_start <= at <= window_end]
        unsettled: dict[str, int] = {}
        for result in results:
            for outcome, count in result.unsettled_acks.items():
                unsettled[outcome] = unsettled.get(outcome, 0) + count
        return RunFigures(
            agents=args.agents, connected=connected, failed=sum(f for _, f, _ in self.progress.values()),
            connect_seconds=connect_seconds, server_connected_agents=int(health.get("connected_agents", -1)),
            rss_idle=rss_idle, rss_connected=rss_connected, rss_end=rss_end,
            client_rss=[rss for _, _, rss in self.progress.values()], baseline_delay=baseline, delay=window_delay,
            ack_round_trips=[rtt for rtt, _ in acks], items_per_second=sum(items for _, items in acks) / elapsed,
            heartbeats_per_second=window_delay[-1][1] / elapsed if window_delay else 0.0, server_cpu=server_cpu,
            others_cpu=others / elapsed, client_lag_p99=percentile(lags, 0.99),
            streams_lost=sum(result.streams_lost for result in results), unsettled=unsettled)


def report(args: argparse.Namespace, runs: list[RunFigures], postgres: LocalPostgres) -> None:
    def figure(name: str, unit: str, values: list[float]) -> str:
        return Figure(name, unit, tuple(values)).line()

    ms = 1000.0
    print(f"{args.agents} agents ({args.per_worker} per worker process), heartbeat every {args.heartbeat_seconds} s, "
          f"a batch interval of {args.batch_seconds:.0f} s (10 performance samples, events in 3 of 10, a state "
          f"change and an alert in 1 of 50), steady window {args.steady_seconds:.0f} s, "
          f"fsync {'off' if args.no_fsync else 'on'}, PostgreSQL at {postgres.bin_dir}")
    print(f"{os.cpu_count()} CPUs shared by the server, PostgreSQL and the fleet; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    for run in runs:
        print(f"  run: {run.connected} connected ({run.server_connected_agents} by the server's count), "
              f"{run.failed} failed, {run.streams_lost} streams lost, unsettled acks {run.unsettled or 'none'}; "
              f"client RSS {[round(r / 2**20) for r in run.client_rss]} MiB per worker")
    print(figure("agents connected", "agents", [r.connected for r in runs]))
    print(figure("time to connect them all", "s", [r.connect_seconds for r in runs]))
    print(figure("baseline: server RSS with no agent", "MiB", [r.rss_idle / 2**20 for r in runs]))
    print(figure("server RSS with every agent connected", "MiB", [r.rss_connected / 2**20 for r in runs]))
    print(figure("server RSS at the end of the steady window", "MiB", [r.rss_end / 2**20 for r in runs]))
    print(figure("server RSS per agent (target <= 100)", "KB", [r.kb_per_agent for r in runs]))
    print(figure("client RSS per agent", "KB",
                 [sum(r.client_rss) / 1024 / max(1, r.connected) for r in runs]))
    print(figure("baseline: heartbeat delay p50, one agent alone", "ms",
                 [quantile(r.baseline_delay, 0.5) * ms for r in runs]))
    print(figure("baseline: heartbeat delay p99, one agent alone", "ms",
                 [quantile(r.baseline_delay, 0.99) * ms for r in runs]))
    print(figure("heartbeat delay p50 under the fleet", "ms", [quantile(r.delay, 0.5) * ms for r in runs]))
    print(figure("heartbeat delay p99 under the fleet (target <= 20)", "ms",
                 [quantile(r.delay, 0.99) * ms for r in runs]))
    print(figure("heartbeats handled within 20 ms (target >= 99)", "%", [within(r.delay, 0.02) * 100 for r in runs]))
    print(figure("heartbeats handled", "/s", [r.heartbeats_per_second for r in runs]))
    print(figure("batch ack round trip p50 (both databases)", "ms",
                 [percentile(r.ack_round_trips, 0.5) * ms for r in runs]))
    print(figure("batch ack round trip p99 (both databases)", "ms",
                 [percentile(r.ack_round_trips, 0.99) * ms for r in runs]))
    print(figure("items committed to both databases", "items/s", [r.items_per_second for r in runs]))
    print(figure("server process CPU", "% of one CPU", [r.server_cpu * 100 for r in runs]))
    print(figure("fleet workers' loop lag p99", "ms", [r.client_lag_p99 * ms for r in runs]))
    print(figure("CPU busy outside this benchmark (another run on the machine)", "CPUs",
                 [r.others_cpu for r in runs]))


async def main(args: argparse.Namespace) -> None:
    restrict_cipher_suites()
    now = datetime.now(UTC)
    ca = create_ca(GROUP, now)
    names = [agent_name(i) for i in range(args.agents)] + [PROBE]
    issue_started = time.perf_counter()
    issued = []
    for name in names:
        identity = issue_with_new_key(ca, Approval(Identity.of(GROUP, Role.AGENT, name), "bench", now), now)
        issued.append((identity.key_pem(), identity.certificate_pem()))
    print(f"issued {len(names)} agent certificates in {time.perf_counter() - issue_started:.1f} s", flush=True)
    server_files = Path(tempfile.mkdtemp(prefix="opsmgr-bench-fleet-files-"))
    write_server_files(server_files, ca, names, now)
    # Its own folder: LocalPostgres hands it to the postgres account when we run as root.
    pg_folder = Path(tempfile.mkdtemp(prefix="opsmgr-bench-fleet-pg-"))
    postgres = LocalPostgres(pg_folder, fsync=not args.no_fsync)
    postgres.start()
    material = Material(names, issued, ca.certificate_pem(), server_files)
    runs = []
    try:
        admin = await asyncpg.connect(postgres.dsn())
        for database in ("operational", "warehouse"):
            await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
        for number in range(args.runs):
            print(f"run {number + 1} of {args.runs}", flush=True)
            runs.append(await FleetRun(args, postgres, material).run())
    finally:
        postgres.stop()
        shutil.rmtree(pg_folder, ignore_errors=True)
        shutil.rmtree(server_files, ignore_errors=True)
    report(args, runs, postgres)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents")
    parser.add_argument("--per-worker", type=int, default=2500, help="agents per worker process")
    parser.add_argument("--heartbeat-seconds", type=int, default=60, help="the interval the server's Welcome names")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="each agent's batch interval")
    parser.add_argument("--steady-seconds", type=float, default=60.0, help="the measured window, all connected")
    parser.add_argument("--settle-seconds", type=float, default=5.0, help="wait after the last connect")
    parser.add_argument("--connect-timeout", type=float, default=600.0, help="give up connecting after this")
    parser.add_argument("--connect-concurrency", type=int, default=32, help="handshakes in flight per worker")
    parser.add_argument("--probe-beats", type=int, default=50, help="the lone agent's heartbeats (baseline)")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh server (medians are reported)")
    parser.add_argument("--asyncio-debug", action="store_true",
                        help="run the server in asyncio debug mode and print its loop stalls (slows it down)")
    parser.add_argument("--no-fsync", action="store_true", help="trade durability for speed, as the tests do")
    asyncio.run(main(parser.parse_args()))
