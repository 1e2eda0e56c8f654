"""Agent footprint: RSS and CPU of a real agent process collecting 50 performance counters every 10 s.

The child process runs what the agent runs for collection: `Collection` (discovery, the rule scheduler, optimized
collection) on a pack of 50 performance rules at 10 s, handing items to the real `DiskQueue` (SQLite, WAL, fsync),
with every module `opsmgr agent` imports (the command, its configuration, the gRPC connection; no server: nothing is
sent, so this is collection's cost plus the queue's, not the network's). The parent samples the child's RSS and CPU
time from /proc after a warm-up. Goals (issue 9): RSS <= 50 MB, CPU <= 1 % of one core.

    .venv/bin/python -m bench.bench_agent_collection [--seconds 90] [--warmup 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

INTERVAL_SECONDS = 10
COUNTERS: list[tuple[str, str, str | None]] = [
    *[("Processor", c, "_Total") for c in ("% Processor Time", "% User Time", "% Privileged Time", "% IO Wait Time",
                                           "% Idle Time")],
    *[("Processor", "% Processor Time", str(n)) for n in range(min(psutil.cpu_count() or 1, 4))],
    *[("Memory", c, None) for c in ("% Used Memory", "% Available Memory", "Available MBytes Memory",
                                    "Used Memory MBytes", "% Used Swap Space", "Available MBytes Swap")],
    *[("Logical Disk", c, "/") for c in ("% Free Space", "% Used Space", "Free Megabytes", "% Free Inodes")],
    *[("Physical Disk", c, "_Total") for c in ("Disk Reads/sec", "Disk Writes/sec", "Disk Read Bytes/sec",
                                               "Disk Write Bytes/sec", "Disk Transfers/sec")],
    *[("Network Adapter", c, "_Total") for c in ("Bytes Received/sec", "Bytes Sent/sec", "Bytes Total/sec",
                                                 "Packets Received/sec", "Packets Sent/sec")],
    *[("System", c, None) for c in ("Load Average 1 Minute", "Load Average 5 Minutes", "Load Average 15 Minutes",
                                    "Processes", "Uptime Seconds")],
    *[("Process", c, "python") for c in ("% Processor Time", "Working Set", "Thread Count", "Instance Count")],
    *[("Process", c, "sshd") for c in ("% Processor Time", "Working Set", "Instance Count")],
    *[("Process", "Instance Count", name) for name in ("cron", "systemd", "sleep", "postgres", "nginx", "dockerd",
                                                       "containerd", "kubelet", "etcd", "kube-apiserver", "rsyslogd",
                                                       "systemd-journald", "chronyd", "agetty")],
]


def pack() -> list[dict[str, Any]]:
    rules = []
    for index, (obj, counter, instance) in enumerate(COUNTERS[:50]):
        performance: dict[str, Any] = {"object": obj, "counter": counter, "intervalSeconds": INTERVAL_SECONDS}
        if instance is not None:
            performance["instance"] = instance
        if index % 2:
            performance["optimizedCollection"] = {"tolerance": 5, "toleranceType": "Percentage",
                                                  "maximumSampleSeparation": 6}
        rules.append({"name": f"counter-{index:02d}", "performance": performance})
    return [{"metadata": {"name": "bench"}, "spec": {"managementGroupRef": {"name": "g"}, "version": "1.0",
                                                     "rules": rules}}]


CHILD = r"""
from opsmgr.cli import main as command
command.get_command(None, "agent")  # what `opsmgr agent` imports, first of all: its configuration, grpc and its stubs
import asyncio, signal, sys
from pathlib import Path
from opsmgr.allocator import one_malloc_arena
one_malloc_arena()  # as `opsmgr agent` does before its first thread
from opsmgr.agent.collection import Collection, CollectionSettings
from opsmgr.agent.queue import DiskQueue
from opsmgr.protocol import agent_channel_pb2 as pb

async def main(work: Path, packs: bytes) -> None:
    queue = await DiskQueue.open(work / "queue.sqlite")
    collection = Collection(CollectionSettings(state_directory=work / "state"), fqdn="bench.contoso.test",
                            placement="host", sink=queue)
    await collection.start()
    collection.apply_config(pb.AgentConfig(management_packs_json=packs, config_version="1"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("running", len(collection.scheduler.plan.rules), flush=True)
    await stop.wait()
    await collection.stop()
    status = await queue.status()
    print("queued", status.depth_items, flush=True)
    await queue.close()

work = Path(sys.argv[1])
asyncio.run(main(work, (work / "packs.json").read_bytes()))
"""


# The same imports and nothing else: what collection itself adds is the difference.
IMPORTS_ONLY = r"""
import time
from opsmgr.cli import main
main.get_command(None, "agent")
import opsmgr.agent.collection, opsmgr.agent.queue  # noqa: F401
print("imported", flush=True)
time.sleep(600)
"""


def import_floor_rss() -> float:
    child = psutil.Popen([sys.executable, "-c", IMPORTS_ONLY], stdout=asyncio.subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        return float(child.memory_info().rss)
    finally:
        child.kill()
        child.wait(30)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="measurement window after the warm-up")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring (imports, first samples)")
    args = parser.parse_args()

    floor = import_floor_rss()
    with tempfile.TemporaryDirectory(prefix="opsmgr-bench-agent-") as directory:
        work = Path(directory)
        (work / "packs.json").write_text(json.dumps(pack()))
        child = psutil.Popen([sys.executable, "-c", CHILD, str(work)], stdout=asyncio.subprocess.PIPE, text=True)
        assert child.stdout is not None
        print(f"agent process {child.pid}: {child.stdout.readline().strip()} rules every {INTERVAL_SECONDS} s")
        time.sleep(args.warmup)
        rss_start = child.memory_info().rss
        cpu_start, wall_start = cpu_seconds(child), time.monotonic()
        peak = rss_start
        while time.monotonic() - wall_start < args.seconds:
            time.sleep(1.0)
            peak = max(peak, child.memory_info().rss)
        cpu_used, wall = cpu_seconds(child) - cpu_start, time.monotonic() - wall_start
        memory = child.memory_full_info()
        threads = child.num_threads()
        child.send_signal(signal.SIGTERM)
        tail = child.stdout.read().strip()
        child.wait(30)

    print(f"measured {wall:.0f} s after a {args.warmup:.0f} s warm-up; {len(pack()[0]['spec']['rules'])} counters "
          f"every {INTERVAL_SECONDS} s, discovery on start, DiskQueue sink ({tail})")
    print(f"RSS: {memory.rss / 2**20:.1f} MB at the end, peak {peak / 2**20:.1f} MB, at warm-up end "
          f"{rss_start / 2**20:.1f} MB (USS {memory.uss / 2**20:.1f} MB, PSS {memory.pss / 2**20:.1f} MB); "
          f"goal <= 50 MB")
    print(f"of which imports alone (grpc, protobuf, pydantic and the api models, psutil, sqlite3, click): "
          f"{floor / 2**20:.1f} MB; collection's own running state: {(memory.rss - floor) / 2**20:.1f} MB")
    print(f"CPU: {100 * cpu_used / wall:.3f} % of one core ({cpu_used:.2f} s in {wall:.0f} s); goal <= 1 %")
    print(f"threads: {threads}; python {sys.version.split()[0]}, pid {os.getpid()} measured child")


if __name__ == "__main__":
    main()
