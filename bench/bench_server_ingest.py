"""End-to-end ingest: items/s committed to both databases through a real `opsmgr server` over mTLS, vs raw COPY.

Same run, same throwaway PostgreSQL, alternating: the server (a subprocess, as deployed) takes bulk-lane batches
from several agents over real mTLS gRPC streams and acknowledges each once the operational DB and the warehouse
both committed it; the figure is items per second until the last ack. The baseline COPYs the same rows into one
database's tables, one COPY per table. Tables are emptied before every measurement.

The load client is not what is measured: its batches are serialized up front, so it costs the server's CPU as
little as it can (what remains is gRPC and TLS, mostly the kernel's loopback send). On 2 cores the client, the server
and PostgreSQL share the CPU, so the benchmark also prints the CPU each spent per item (psutil, every process of
the server and of PostgreSQL; backends by the database their title names), for the baseline and the server alike.
The server never defers the warehouse as stalled here (a long `stall_seconds`): on a busy machine a commit can take
seconds, and deferred batches would have to be replayed, which is not what this measures.

    .venv/bin/python -m bench.bench_server_ingest [--agents 4] [--batches 50] [--items 500] [--window 16] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import operator
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import psutil
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from bench.common import Figure
from opsmgr.db.model import Database, Retention
from opsmgr.db.partitions import PartitionKey
from opsmgr.db.routing import TABLE_COLUMNS, plan_write
from opsmgr.db.schema import ensure_partitions, prepare_database
from opsmgr.dev.postgres import LocalPostgres, free_port
from opsmgr.pki import Approval, Identity, ManagementServerNames, Role, create_ca, issue_with_new_key
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.convert import to_batch
from opsmgr.server.tls import restrict_cipher_suites

GROUP = "contoso"
NAMES = ManagementServerNames(group=GROUP, namespace="opsmgr", statefulset="ms", headless_service="ms-hl",
                              shared_service="ms", replica=0)
TARGET = "ms.opsmgr.svc"
METHOD = "/opsmgr.agentchannel.v1.AgentChannel/Connect"
RESET = "TRUNCATE events, performance_samples, state_changes, committed_batches, late_data_drops"


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def make_batches(agent: int, count: int, items: int, now: datetime) -> list[pb.DataBatch]:
    """One agent's bulk-lane batches, one event to three performance samples, as bench_ingest forms them."""
    rng = random.Random(agent)
    epoch = str(uuid.uuid4())
    batches = []
    for seq in range(count):
        wire = pb.DataBatch(epoch=epoch, seq=seq, lane=pb.LANE_BULK)
        for n in range(items):
            at = stamp(now - timedelta(seconds=rng.randint(0, 3600)))
            if n % 4 == 0:
                wire.items.add().event.CopyFrom(pb.Event(
                    logged_at=at, object_key=f"Linux.Computer:web{agent:02d}.bench.test", channel="syslog",
                    source="sshd", number=4625, level=3, description=f"Failed password for invalid user {seq}.{n}"))
            else:
                wire.items.add().performance.CopyFrom(pb.PerformanceSample(
                    sampled_at=at, object_key=f"Linux.Computer:web{agent:02d}.bench.test", object_name="Processor",
                    counter_name="% Processor Time", instance_name=f"cpu{n % 16}", value=rng.random() * 100))
        batches.append(wire)
    return batches


def agent_name(index: int) -> str:
    return f"web{index:02d}.bench.test"


class ServerUnderTest:
    def __init__(self, folder: Path, operational_dsn: str, warehouse_dsn: str, agents: int, writers: int) -> None:
        now = datetime.now(UTC)
        self.ca = create_ca(GROUP, now)
        server = issue_with_new_key(self.ca, Approval(NAMES.identity(), "bench", now), now,
                                    dns_names=NAMES.dns_names())
        (folder / "tls.crt").write_bytes(server.certificate_pem())
        (folder / "tls.key").write_bytes(server.key_pem())
        (folder / "ca.crt").write_bytes(self.ca.certificate_pem())
        (folder / "directory.yaml").write_text(yaml.safe_dump(
            {"agents": [{"fqdn": agent_name(i), "approval": "Approved"} for i in range(agents)]}))
        self.port, self.metrics_port = free_port(), free_port()
        config = {"group": GROUP, "name": NAMES.identity().name, "listen": {"address": "127.0.0.1", "port": self.port},
                  "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt"},
                  "databases": {"operational_dsn": operational_dsn, "warehouse_dsn": warehouse_dsn},
                  "metrics": {"address": "127.0.0.1", "port": self.metrics_port},
                  "directory": {"file": "directory.yaml"}, "log": {"level": "WARNING"},
                  # Never deferred as stalled: on this shared machine a commit can take seconds, and this bench
                  # measures throughput, not the stall reaction (the tests cover that).
                  "ingest": {"writers_per_database": writers, "stall_seconds": 3600}}
        (folder / "server.yaml").write_text(yaml.safe_dump(config))
        self.log = (folder / "server.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "opsmgr", "server", "--config",
                                         str(folder / "server.yaml")], stdout=self.log, stderr=subprocess.STDOUT)
        self.credentials = []
        for i in range(agents):
            issued = issue_with_new_key(self.ca, Approval(Identity.of(GROUP, Role.AGENT, agent_name(i)), "bench",
                                                          now), now)
            self.credentials.append(grpc.ssl_channel_credentials(
                root_certificates=self.ca.certificate_pem(), private_key=issued.key_pem(),
                certificate_chain=issued.certificate_pem()))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see its log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("the server never answered /healthz")

    def batches_per_transaction(self) -> dict[str, tuple[float, float]]:
        """(sum, count) of the server's batches-per-transaction histogram, by database, read from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        found: dict[str, list[float]] = {}
        for line in text.splitlines():
            for part, slot in (("opsmgr_batches_per_transaction_sum", 0), ("opsmgr_batches_per_transaction_count", 1)):
                if line.startswith(part + "{"):
                    database = line.split('database="', 1)[1].split('"', 1)[0]
                    found.setdefault(database, [0.0, 0.0])[slot] = float(line.rsplit(" ", 1)[1])
        return {database: (total, count) for database, (total, count) in found.items()}

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def cpu_by_process(server_pid: int, postgres_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this load client, the server and each PostgreSQL process, by pid, each with its part:
    a backend's title names its database, so each database's share shows apart from PostgreSQL's own workers."""
    found: dict[int, tuple[str, float]] = {}
    for part, root in (("load client", os.getpid()), ("server", server_pid), ("postgres", postgres_pid)):
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(root)
            members = [process] if part == "load client" else [process, *process.children(recursive=True)]
            for member in members:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = member.cpu_times()
                    label = part
                    if part == "postgres":
                        title = " ".join(member.cmdline())
                        database = next((name for name in ("operational", "warehouse", "raw")
                                         if f" {name} " in title), None)
                        label = f"postgres {database}" if database else "postgres (own workers)"
                    found[member.pid] = (label, float(times.user + times.system))
    return found


def cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by part (a process new since `before` counts from zero)."""
    spent: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        spent[label] = spent.get(label, 0.0) + seconds - before.get(pid, (label, 0.0))[1]
    return spent


async def send_all(port: int, credentials: grpc.ChannelCredentials, batches: list[bytes], window: int) -> None:
    """One agent's stream: keep `window` batches unacknowledged; done when both databases acked every batch."""
    options = [("grpc.ssl_target_name_override", TARGET), ("grpc.enable_http_proxy", 0)]
    async with aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as chan:
        call = chan.stream_stream(METHOD, request_serializer=None, response_deserializer=pb.ServerMessage.FromString)()
        await call.write(pb.AgentMessage(hello=pb.Hello(min_version=1, max_version=1)).SerializeToString())
        welcome = await call.read()
        assert welcome.WhichOneof("body") == "welcome", welcome
        open_slots = asyncio.Semaphore(window)
        acks: dict[int, int] = {}

        async def read_acks() -> None:
            while len([seq for seq, count in acks.items() if count == 2]) < len(batches):
                reply = await call.read()
                assert reply is not aio.EOF, "the stream ended early"
                if reply.WhichOneof("body") != "ack":
                    continue  # e.g. a config or trust update: the server may send one any time
                ack = reply.ack
                assert ack.outcome == pb.Ack.OUTCOME_COMMITTED, ack
                acks[ack.seq] = acks.get(ack.seq, 0) + 1
                if acks[ack.seq] == 2:
                    open_slots.release()

        reader = asyncio.create_task(read_acks())
        for raw in batches:
            slot = asyncio.ensure_future(open_slots.acquire())
            await asyncio.wait((slot, reader), return_when=asyncio.FIRST_COMPLETED)
            if not slot.done():  # the reader failed: say why, do not wait for acks that never come
                slot.cancel()
                await reader
            await call.write(raw)
        await reader
        await call.done_writing()


def baseline_rows(wires: list[list[pb.DataBatch]], now: datetime) -> tuple[dict[str, list[tuple[object, ...]]],
                                                                           set[PartitionKey]]:
    """The rows the batches become in one database, by table, and the partitions they need."""
    rows: dict[str, list[tuple[object, ...]]] = {}
    partitions: set[PartitionKey] = set()
    for a, agent_wires in enumerate(wires):
        for wire in agent_wires:
            planned = plan_write(to_batch(agent_name(a), wire), Database.OPERATIONAL, Retention(), now)
            partitions |= planned.partitions
            for table, table_rows in planned.rows.items():
                rows.setdefault(table, []).extend(table_rows)
    return rows, partitions


async def copy_raw(raw: asyncpg.Connection, rows: dict[str, list[tuple[object, ...]]], total: int,
                   processes: Callable[[], dict[int, tuple[str, float]]]) -> tuple[float, dict[str, float]]:
    """The baseline: the rows COPYed into emptied tables of one database, one COPY per table; rows/s and the CPU
    each part spent per row."""
    await raw.execute(RESET)
    before = processes()
    start = time.perf_counter()
    for table, table_rows in rows.items():
        await raw.copy_records_to_table(table, records=table_rows, columns=TABLE_COLUMNS[table])
    rate = total / (time.perf_counter() - start)
    return rate, per_item(cpu_spent(before, processes()), total)


async def check_exactly_once(databases: tuple[asyncpg.Connection, ...], generated: dict[str, int]) -> None:
    """Untimed: each database holds every generated row of each table once (rows = distinct item keys = generated)."""
    for conn in databases:
        for table, count in generated.items():
            rows, keys = await conn.fetchrow(
                f"SELECT count(*), count(DISTINCT (batch_epoch, batch_seq, item_no)) FROM {table}")
            assert rows == keys == count, f"{table}: {rows} rows, {keys} distinct items, {count} generated"


def per_item(spent: dict[str, float], total: int) -> dict[str, float]:
    return {part: seconds / total for part, seconds in spent.items()}


async def main(agents: int, batches_per_agent: int, items: int, window: int, runs: int, *, writers: int,
               fsync: bool) -> None:
    restrict_cipher_suites()
    folder = Path(tempfile.mkdtemp(prefix="opsmgr-bench-server-"))
    # Its own folder: LocalPostgres hands it to the postgres account when we run as root.
    pg_folder = Path(tempfile.mkdtemp(prefix="opsmgr-bench-pg-"))
    postgres = LocalPostgres(pg_folder, fsync=fsync)
    postgres.start()
    server: ServerUnderTest | None = None
    try:
        admin = await asyncpg.connect(postgres.dsn())
        for name in ("operational", "warehouse", "raw"):
            await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        op, wh, raw = [await asyncpg.connect(postgres.dsn(n)) for n in ("operational", "warehouse", "raw")]
        now = datetime.now(UTC)
        for conn, database in ((op, Database.OPERATIONAL), (wh, Database.WAREHOUSE), (raw, Database.OPERATIONAL)):
            await prepare_database(conn, database, Retention(), now=now)
        server = ServerUnderTest(folder, postgres.dsn("operational"), postgres.dsn("warehouse"), agents, writers)
        await asyncio.to_thread(server.wait_ready)
        total = agents * batches_per_agent * items
        server_runs, raw_runs, server_cpu = [], [], []
        budgets: list[dict[str, float]] = []
        raw_budgets: list[dict[str, float]] = []
        postgres_pid = postgres.pid
        assert postgres_pid is not None
        for _ in range(runs):
            # Fresh epochs every run: the server must write, not find the batches already committed.
            wires = [make_batches(a, batches_per_agent, items, now) for a in range(agents)]
            rows, partitions = baseline_rows(wires, now)
            # Past midnight the items' hour reaches into yesterday: its partitions exist before anything is timed.
            for conn in (op, wh, raw):
                await ensure_partitions(conn, partitions)
            raw_bytes = [[pb.AgentMessage(batch=w).SerializeToString() for w in agent_wires] for agent_wires in wires]
            processes = functools.partial(cpu_by_process, server.process.pid, postgres_pid)
            rate, budget = await copy_raw(raw, rows, total, processes)
            raw_runs.append(rate)
            raw_budgets.append(budget)
            await asyncio.gather(op.execute(RESET), wh.execute(RESET))
            cpu_before = server.cpu_seconds()
            processes_before = processes()
            start = time.perf_counter()
            await asyncio.gather(*(send_all(server.port, server.credentials[a], raw_bytes[a], window)
                                   for a in range(agents)))
            elapsed = time.perf_counter() - start
            server_runs.append(total / elapsed)
            server_cpu.append((server.cpu_seconds() - cpu_before) / elapsed)
            budgets.append(per_item(cpu_spent(processes_before, processes()), total))
            await check_exactly_once((op, wh), {table: len(table_rows) for table, table_rows in rows.items()})
        grouping = server.batches_per_transaction()
        for conn in (op, wh, raw):
            await conn.close()
    finally:
        if server is not None:
            server.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(pg_folder, ignore_errors=True)
    print(f"{agents} agents x {batches_per_agent} bulk batches x {items} items (1 event : 3 performance samples), "
          f"window {window} batches per agent, {writers} writers per database, fsync {'on' if fsync else 'off'}, "
          f"PostgreSQL at {postgres.bin_dir}")
    report(server_runs, raw_runs, server_cpu, grouping, budgets=budgets, raw_budgets=raw_budgets)


def report(server_runs: list[float], raw_runs: list[float], server_cpu: list[float],
           grouping: dict[str, tuple[float, float]], *, budgets: list[dict[str, float]],
           raw_budgets: list[dict[str, float]]) -> None:
    through_server = Figure("through the server over mTLS, operational + warehouse, until the last ack", "items/s",
                            tuple(server_runs))
    baseline = Figure("raw COPY into one database", "rows/s", tuple(raw_runs))
    print(f"{os.cpu_count()} CPUs (server, PostgreSQL and the agents share them), "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    for figure in (baseline, through_server):
        print(figure.line())
    cpu_per_item = statistics.median(map(operator.truediv, server_cpu, server_runs))
    print(f"server process busy {statistics.median(server_cpu):.0%} of one CPU while ingesting, "
          f"{cpu_per_item * 1e6:.2f} us of its CPU per item (medians; the latter varies least with the load)")
    for name, runs in (("raw COPY", raw_budgets), ("through the server", budgets)):
        print(f"CPU per item, {name} (medians): {cpu_budget(runs)}")
    print("batches per transaction (mean over all runs): " + ", ".join(
        f"{database} {total / count:.1f}" for database, (total, count) in sorted(grouping.items()) if count))
    print(f"ratio server / raw COPY (medians): {through_server.median / baseline.median:.2f} (target >= 0.4)")

def cpu_budget(runs: list[dict[str, float]]) -> str:
    """The median CPU per item of each part that spent any (of 0.01 us or more), and their sum."""
    parts = sorted({part for budget in runs for part in budget})
    medians = {part: statistics.median(budget.get(part, 0.0) for budget in runs) for part in parts}
    shown = {part: seconds for part, seconds in medians.items() if seconds >= 0.5e-8}
    return ", ".join(f"{part} {seconds * 1e6:.2f} us" for part, seconds in shown.items()) + \
        f"; all {sum(medians.values()) * 1e6:.2f} us"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=4, help="concurrent agent streams")
    parser.add_argument("--batches", type=int, default=50, help="bulk-lane batches per agent per run")
    parser.add_argument("--items", type=int, default=500, help="items per batch")
    parser.add_argument("--window", type=int, default=16, help="unacknowledged batches per agent")
    parser.add_argument("--writers", type=int, default=2, help="the server's writers per database")
    parser.add_argument("--runs", type=int, default=5, help="runs of each measurement (medians are compared)")
    parser.add_argument("--no-fsync", action="store_true", help="trade durability for speed, as the tests do")
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.batches, args.items, args.window, args.runs, writers=args.writers,
                     fsync=not args.no_fsync))
