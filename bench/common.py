"""Shared helpers for benchmarks: run a measurement several times and report the median and spread; read the
server's heartbeat delay histogram; count the CPU this machine spent outside the benchmark; the lone-agent probe.

This machine is shared and noisy, so every figure is a median of several runs, and speed is quoted as a ratio
against a baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml
from tests.integration.server.client import AgentStream, Credentials, channel
from tests.integration.server.conftest import SERVER_NAMES

from opsmgr.pki import Approval, CertificateAuthority, issue_with_new_key
from opsmgr.protocol import agent_channel_pb2 as pb

DELAY_METRIC = "opsmgr_heartbeat_delay_seconds"


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def line(self) -> str:
        spread = f"min {min(self.runs):.4g}, max {max(self.runs):.4g}" if len(self.runs) > 1 else "one run"
        return f"{self.name}: median {self.median:.4g} {self.unit} over {len(self.runs)} runs ({spread})"


def measure_seconds(name: str, action: Callable[[], object], runs: int = 5) -> Figure:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return Figure(name, "s", tuple(timings))


def delay_buckets(metrics: str) -> list[tuple[float, float]]:
    """The heartbeat delay histogram as (upper bound, cumulative count), ascending."""
    found = re.findall(rf'^{DELAY_METRIC}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.MULTILINE)
    return sorted((float(bound), float(count)) for bound, count in found)


def minus(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Linear interpolation within the bucket holding the q-th observation (inf when it is past the last bound)."""
    total = buckets[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            return bound if math.isinf(bound) else lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return math.inf


def within(buckets: list[tuple[float, float]], bound: float) -> float:
    total = buckets[-1][1]
    return dict(buckets)[bound] / total if total else math.nan


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


async def probe(port: int, credentials: Credentials, beats: int) -> None:
    """The baseline: one agent alone heartbeating every 0.1 s."""
    async with channel(port, credentials) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        for seq in range(1, beats + 1):
            beat = pb.Heartbeat(seq=seq)
            beat.sent_at.GetCurrentTime()
            await stream.send(pb.AgentMessage(heartbeat=beat))
            await asyncio.sleep(0.1)
        await stream.send(pb.AgentMessage(goodbye=pb.Goodbye(reason="probe over")))
        await stream.call.done_writing()


def busy_seconds(times: Any) -> float:
    return float(times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0.0))


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            for member in (process, *process.children(recursive=True)):
                with contextlib.suppress(psutil.NoSuchProcess):
                    cpu = member.cpu_times()
                    total += cpu.user + cpu.system
    return total


def largest(buckets: list[tuple[float, float]]) -> float:
    """The upper bound of the highest bucket that holds an observation: the histogram's view of the maximum."""
    below = 0.0
    top = 0.0
    for bound, count in buckets:
        if count > below:
            top = bound
        below = count
    return top


def write_server_files(folder: Path, ca: CertificateAuthority, agents: list[str], now: datetime) -> None:
    """The server's certificate, key and CA, and a directory file approving `agents`, as `ServerProcess` reads them."""
    server = issue_with_new_key(ca, Approval(SERVER_NAMES.identity(), "bench", now), now,
                                dns_names=SERVER_NAMES.dns_names())
    (folder / "tls.crt").write_bytes(server.certificate_pem())
    (folder / "tls.key").write_bytes(server.key_pem())
    (folder / "ca.crt").write_bytes(ca.certificate_pem())
    (folder / "directory.yaml").write_text(yaml.safe_dump(
        {"agents": [{"fqdn": name, "approval": "Approved"} for name in agents]}))
