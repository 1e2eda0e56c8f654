"""Performance counters of the computer, named as Operations Manager names its Linux counters.

`open_reader(counter)` returns a reader whose `read()` gives one value per instance. Counters of a rate ("/sec",
processor time) are computed from two cumulative readings, so a reader takes its first reading when it opens and
its first `read()` already covers a whole interval. Reading /proc happens in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from opsmgr.agent.probes import PROBE_COUNTERS, probe_gatherer
from opsmgr.api.management_pack import PerformanceCounter

TOTAL = "_Total"
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reading:
    instance: str
    value: float


class CounterReader(Protocol):
    async def read(self) -> list[Reading]: ...


class UnknownCounter(ValueError):
    """A rule names a counter this agent does not provide; the message lists the ones it does."""


def rates(previous: Mapping[str, float], current: Mapping[str, float], seconds: float,
          instance_of: Callable[[str], str] = lambda key: key) -> dict[str, float]:
    """Per-second change of each cumulative value present in both readings, summed per instance.

    A value that went down (a counter reset, a reused pid) contributes nothing rather than a negative rate.
    """
    if seconds <= 0:
        return {}
    out: dict[str, float] = {}
    for key, now in current.items():
        before = previous.get(key)
        instance = instance_of(key)
        out.setdefault(instance, 0.0)
        if before is not None and now >= before:
            out[instance] += (now - before) / seconds
    return out


def busy_percent(previous: Mapping[str, float], current: Mapping[str, float], fields: tuple[str, ...]) -> float:
    """Share (0..100) of the CPU time between two `cpu_times` readings spent in `fields`."""
    total = sum(current.values()) - sum(previous.values())
    if total <= 0:
        return 0.0
    spent = sum(current[f] - previous[f] for f in fields)
    return max(0.0, min(100.0, 100.0 * spent / total))


# ---------------------------------------------------------------- gatherers (run in a worker thread)

def _cpu_times() -> dict[str, dict[str, float]]:
    # guest time is already inside user time on Linux; counting it again would exceed 100 %.
    def plain(times: Any) -> dict[str, float]:
        return {k: v for k, v in times._asdict().items() if k not in ("guest", "guest_nice")}
    per_cpu = {str(index): plain(times) for index, times in enumerate(psutil.cpu_times(percpu=True))}
    per_cpu[TOTAL] = plain(psutil.cpu_times())
    return per_cpu


def _memory() -> dict[str, float]:
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return {
        "% Used Memory": 100.0 * (memory.total - memory.available) / memory.total,
        "% Available Memory": 100.0 * memory.available / memory.total,
        "Available MBytes Memory": memory.available / MB,
        "Used Memory MBytes": (memory.total - memory.available) / MB,
        "% Used Swap Space": swap.percent,
        "Available MBytes Swap": swap.free / MB,
    }


def _mounts() -> list[str]:
    return sorted({p.mountpoint for p in psutil.disk_partitions(all=False)})


def _logical_disk(instance: str | None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mount in [instance] if instance else _mounts():
        try:
            usage = os.statvfs(mount)
        except OSError:
            continue  # unmounted since the list was taken, or not ours to read
        # As df counts: blocks reserved for root are neither free nor used for everyone else.
        usable = (usage.f_blocks - usage.f_bfree + usage.f_bavail) or 1
        free_mb = usage.f_bavail * usage.f_frsize / MB
        out[mount] = {
            "% Free Space": 100.0 * usage.f_bavail / usable,
            "% Used Space": 100.0 * (usage.f_blocks - usage.f_bfree) / usable,
            "Free Megabytes": free_mb,
            "% Free Inodes": 100.0 * usage.f_favail / usage.f_files if usage.f_files else 100.0,
        }
    return out


def _disk_io() -> dict[str, dict[str, float]]:
    per_disk = psutil.disk_io_counters(perdisk=True) or {}
    out = {name: {"Disk Reads/sec": float(c.read_count), "Disk Writes/sec": float(c.write_count),
                  "Disk Read Bytes/sec": float(c.read_bytes), "Disk Write Bytes/sec": float(c.write_bytes),
                  "Disk Transfers/sec": float(c.read_count + c.write_count)}
           for name, c in per_disk.items() if not name.startswith(("loop", "ram"))}
    return _with_total(out)


def _network() -> dict[str, dict[str, float]]:
    out = {name: {"Bytes Received/sec": float(c.bytes_recv), "Bytes Sent/sec": float(c.bytes_sent),
                  "Bytes Total/sec": float(c.bytes_recv + c.bytes_sent),
                  "Packets Received/sec": float(c.packets_recv), "Packets Sent/sec": float(c.packets_sent)}
           for name, c in psutil.net_io_counters(pernic=True).items() if name != "lo"}
    return _with_total(out)


def _with_total(per_instance: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    total: dict[str, float] = {}
    for values in per_instance.values():
        for name, value in values.items():
            total[name] = total.get(name, 0.0) + value
    return {**per_instance, TOTAL: total}


def _system() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"Load Average 1 Minute": one, "Load Average 5 Minutes": five, "Load Average 15 Minutes": fifteen,
            "Processes": float(len(psutil.pids())), "Uptime Seconds": time.time() - psutil.boot_time()}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PROCESS_SNAPSHOT_SECONDS = 1.0  # rules that tick together (same interval) share one scan of /proc


@dataclass(frozen=True, slots=True)
class ProcessRow:
    names: frozenset[str]
    key: str  # pid and start time: a reused pid is another process
    cpu_seconds: float
    rss_bytes: float
    threads: float


def parse_stat(pid: str, stat: str) -> tuple[str, str, float, float, float]:
    """(comm, key, cpu seconds, rss bytes, threads) from one /proc/PID/stat line (pure)."""
    comm = stat[stat.index("(") + 1: stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    # After the comm: utime is the 12th field, stime 13th, num_threads 18th, starttime 20th, rss 22nd (0-based).
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return comm, f"{pid}:{fields[19]}", cpu, float(int(fields[21]) * PAGE_SIZE), float(fields[17])


def scan_processes(proc: str = "/proc") -> list[ProcessRow]:
    """Every process, read straight from /proc: one file per process (two when its name was cut at 15 chars)."""
    rows = []
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(f"{proc}/{pid}/stat") as source:
                comm, key, cpu, rss, threads = parse_stat(pid, source.read())
            names = {comm}
            if len(comm) >= 15:  # the kernel keeps 15 characters of a name; argv[0] has the rest
                with open(f"{proc}/{pid}/cmdline", "rb") as source:
                    argv0 = source.read().split(b"\0", 1)[0].decode(errors="replace")
                if argv0:
                    names.add(os.path.basename(argv0.split(" ", 1)[0]))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked, or not ours to read
        rows.append(ProcessRow(frozenset(names), key, cpu, rss, threads))
    return rows


class ProcessTable:
    """One scan of /proc shared by every process counter that samples within `PROCESS_SNAPSHOT_SECONDS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[ProcessRow] = []
        self._at = -PROCESS_SNAPSHOT_SECONDS

    def rows(self) -> list[ProcessRow]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= PROCESS_SNAPSHOT_SECONDS:
                self._rows, self._at = scan_processes(), now
            return self._rows


PROCESSES = ProcessTable()


def _process_table(instance: str | None) -> list[tuple[str, ProcessRow]]:
    """(name, row) of every process, or of those answering to `instance`."""
    rows = PROCESSES.rows()
    if instance is not None:
        return [(instance, row) for row in rows if instance in row.names]
    return [(name, row) for row in rows for name in row.names]


# ---------------------------------------------------------------- readers

def _select(values: Mapping[str, float], instance: str | None) -> list[Reading]:
    if instance is not None:
        return [Reading(instance, values[instance])] if instance in values else []
    return [Reading(name, value) for name, value in sorted(values.items())]


class GaugeReader:
    """A value read as it is now."""

    def __init__(self, gather: Callable[[], Mapping[str, float]], instance: str | None) -> None:
        self._gather = gather
        self._instance = instance

    async def read(self) -> list[Reading]:
        return _select(await asyncio.to_thread(self._gather), self._instance)


class RateReader:
    """A per-second rate between two readings of cumulative values (scaled, e.g. by 100 for CPU seconds)."""

    def __init__(self, gather: Callable[[], Mapping[str, float]], instance: str | None,
                 instance_of: Callable[[str], str] = lambda key: key, scale: float = 1.0) -> None:
        self._gather = gather
        self._instance = instance
        self._instance_of = instance_of
        self._scale = scale
        self._previous: Mapping[str, float] | None = None
        self._at = 0.0

    async def prime(self) -> None:
        self._previous, self._at = await asyncio.to_thread(self._gather), time.monotonic()

    async def read(self) -> list[Reading]:
        current, now = await asyncio.to_thread(self._gather), time.monotonic()
        previous, self._previous, elapsed, self._at = self._previous, current, now - self._at, now
        if previous is None:
            return []
        per_second = rates(previous, current, elapsed, self._instance_of)
        return _select({k: v * self._scale for k, v in per_second.items()}, self._instance)


class ProcessorReader:
    """% of CPU time in some states, per CPU and _Total, between two readings."""

    def __init__(self, fields: tuple[str, ...], instance: str | None) -> None:
        self._fields = fields
        self._instance = instance
        self._previous: dict[str, dict[str, float]] | None = None

    async def prime(self) -> None:
        self._previous = await asyncio.to_thread(_cpu_times)

    async def read(self) -> list[Reading]:
        current = await asyncio.to_thread(_cpu_times)
        previous, self._previous = self._previous, current
        if previous is None:
            return []
        values = {cpu: busy_percent(previous[cpu], times, self._fields)
                  for cpu, times in current.items() if cpu in previous}
        return _select(values, self._instance)


PROCESSOR_FIELDS: Mapping[str, tuple[str, ...]] = {
    "% Processor Time": ("user", "nice", "system", "irq", "softirq", "steal"),
    "% User Time": ("user", "nice"),
    "% Privileged Time": ("system", "irq", "softirq"),
    "% IO Wait Time": ("iowait",),
    "% Idle Time": ("idle",),
}
MEMORY_COUNTERS = ("% Used Memory", "% Available Memory", "Available MBytes Memory", "Used Memory MBytes",
                   "% Used Swap Space", "Available MBytes Swap")
LOGICAL_DISK_COUNTERS = ("% Free Space", "% Used Space", "Free Megabytes", "% Free Inodes")
PHYSICAL_DISK_COUNTERS = ("Disk Reads/sec", "Disk Writes/sec", "Disk Read Bytes/sec", "Disk Write Bytes/sec",
                          "Disk Transfers/sec")
NETWORK_COUNTERS = ("Bytes Received/sec", "Bytes Sent/sec", "Bytes Total/sec", "Packets Received/sec",
                    "Packets Sent/sec")
SYSTEM_COUNTERS = ("Load Average 1 Minute", "Load Average 5 Minutes", "Load Average 15 Minutes", "Processes",
                   "Uptime Seconds")
PROCESS_COUNTERS = ("% Processor Time", "Working Set", "Thread Count", "Instance Count")


def _column(gather: Callable[[], Mapping[str, Mapping[str, float]]], counter: str) -> Callable[[], dict[str, float]]:
    return lambda: {instance: values[counter] for instance, values in gather().items()}


def _single(gather: Callable[[], Mapping[str, float]], counter: str) -> Callable[[], dict[str, float]]:
    # Counters without instances report the empty instance name, which is what the database stores for them.
    return lambda: {"": gather()[counter]}


def _process_gauge(counter: str, instance: str | None) -> Callable[[], dict[str, float]]:
    def gather() -> dict[str, float]:
        out: dict[str, float] = {instance: 0.0} if instance else {}
        for name, row in _process_table(instance):
            add = {"Instance Count": 1.0, "Working Set": row.rss_bytes}.get(counter, row.threads)
            out[name] = out.get(name, 0.0) + add
        return out
    return gather


def _process_cpu_seconds(instance: str | None) -> Callable[[], dict[str, float]]:
    def gather() -> dict[str, float]:
        return {f"{name}\0{row.key}": row.cpu_seconds for name, row in _process_table(instance)}
    return gather


def _known() -> str:
    objects = {"Processor": tuple(PROCESSOR_FIELDS), "Memory": MEMORY_COUNTERS, "Logical Disk": LOGICAL_DISK_COUNTERS,
               "Physical Disk": PHYSICAL_DISK_COUNTERS, "Network Adapter": NETWORK_COUNTERS,
               "System": SYSTEM_COUNTERS, "Process": PROCESS_COUNTERS}
    return "; ".join(f"{name}: {', '.join(counters)}" for name, counters in objects.items())


class ProbeReader:
    """A probe (`opsmgr.agent.probes`) read like a counter; it does its own waiting on the loop."""

    def __init__(self, gather: Callable[[], Awaitable[Mapping[str, float]]]) -> None:
        self._gather = gather

    async def read(self) -> list[Reading]:
        return _select(await self._gather(), None)


async def open_reader(counter: PerformanceCounter) -> CounterReader:
    """The reader of one counter or probe, primed; UnknownCounter (a ValueError) says what exists."""
    try:
        probe = probe_gatherer(counter)
    except ValueError as error:
        raise UnknownCounter(str(error)) from None
    reader = ProbeReader(probe) if probe is not None else _reader(counter)
    if reader is None:
        raise UnknownCounter(f"counter {counter.object!r} / {counter.counter!r} is not one this agent provides; use "
                             f"one of {_known()}; or a probe: {PROBE_COUNTERS}")
    prime: Callable[[], Awaitable[None]] | None = getattr(reader, "prime", None)
    if prime is not None:
        await prime()
    return reader


def _processor(name: str, instance: str | None) -> CounterReader | None:
    return ProcessorReader(PROCESSOR_FIELDS[name], instance) if name in PROCESSOR_FIELDS else None


def _memory_reader(name: str, instance: str | None) -> CounterReader | None:
    return GaugeReader(_single(_memory, name), "") if name in MEMORY_COUNTERS else None


def _system_reader(name: str, instance: str | None) -> CounterReader | None:
    return GaugeReader(_single(_system, name), "") if name in SYSTEM_COUNTERS else None


def _logical_disk_reader(name: str, instance: str | None) -> CounterReader | None:
    if name not in LOGICAL_DISK_COUNTERS:
        return None
    return GaugeReader(_column(lambda: _logical_disk(instance), name), instance)


def _physical_disk_reader(name: str, instance: str | None) -> CounterReader | None:
    return RateReader(_column(_disk_io, name), instance) if name in PHYSICAL_DISK_COUNTERS else None


def _network_reader(name: str, instance: str | None) -> CounterReader | None:
    return RateReader(_column(_network, name), instance) if name in NETWORK_COUNTERS else None


def _process_reader(name: str, instance: str | None) -> CounterReader | None:
    if name == "% Processor Time":
        # Per-process CPU seconds are keyed by name and pid, so a process that exits or starts does not skew it.
        return RateReader(_process_cpu_seconds(instance), instance, lambda key: key.split("\0", 1)[0], 100.0)
    return GaugeReader(_process_gauge(name, instance), instance) if name in PROCESS_COUNTERS else None


# Memory and System have no instances: any instance a rule names (_Total, or none) reads the one value.
OBJECTS: Mapping[str, Callable[[str, str | None], CounterReader | None]] = {
    "Processor": _processor, "Memory": _memory_reader, "System": _system_reader,
    "Logical Disk": _logical_disk_reader, "Physical Disk": _physical_disk_reader, "Network Adapter": _network_reader,
    "Process": _process_reader,
}


def _reader(counter: PerformanceCounter) -> CounterReader | None:
    factory = OBJECTS.get(counter.object)
    return factory(counter.counter, counter.instance) if factory is not None else None
