"""Detection latency of the health service watcher with 10,000 agents heartbeating in real time.

Intervals are shortened (1 s, threshold 4) so a run takes seconds; the target is interval x threshold + 1 s
from an agent's last heartbeat to its "Health Service Heartbeat Failure". Also prints the CPU the watcher loop
spent, as a share of one core, while 10,000 agents heartbeat.

    .venv/bin/python -m bench.bench_watcher
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from opsmgr.server.heartbeat_watcher import HEARTBEAT_FAILURE, AlertRaised, HeartbeatWatcher

AGENTS = 10_000
SILENCED = 200
INTERVAL = 1.0
THRESHOLD = 4


async def one_run(seed: int) -> tuple[list[float], float]:
    rng = random.Random(seed)
    watcher = HeartbeatWatcher(default_interval=INTERVAL, default_threshold=THRESHOLD)
    names = [f"agent{n:05d}.bench.test" for n in range(AGENTS)]
    start = time.monotonic()
    for name in names:
        watcher.watch(name, start)
    silenced = set(rng.sample(names, SILENCED))
    last_heartbeat: dict[str, float] = {}
    detected: dict[str, float] = {}
    stop_sending_at = start + 3 * INTERVAL
    cpu_start = time.process_time()

    async def agents() -> None:
        # Each agent heartbeats once per interval at its own phase, like a real fleet.
        slots = 100
        while time.monotonic() < start + (THRESHOLD + 5) * INTERVAL:
            for slot in range(slots):
                now = time.monotonic()
                for name in names[slot::slots]:
                    if name in silenced and now >= stop_sending_at:
                        continue
                    watcher.heartbeat(name, now)
                    last_heartbeat[name] = now
                await asyncio.sleep(INTERVAL / slots)

    async def watch_loop() -> None:
        while len(detected) < SILENCED and time.monotonic() < start + (THRESHOLD + 8) * INTERVAL:
            now = time.monotonic()
            for event in watcher.due(now):
                if isinstance(event, AlertRaised) and event.name == HEARTBEAT_FAILURE:
                    detected[event.agent] = now
            deadline = watcher.next_deadline()
            await asyncio.sleep(min(max((deadline or now + 0.1) - time.monotonic(), 0.0), 0.1))

    await asyncio.gather(agents(), watch_loop())
    cpu = time.process_time() - cpu_start
    wall = time.monotonic() - start
    false_alarms = set(detected) - silenced
    assert not false_alarms, f"{len(false_alarms)} healthy agents were reported"
    missing = silenced - set(detected)
    assert not missing, f"{len(missing)} silent agents were never reported"
    return [detected[a] - last_heartbeat[a] for a in silenced], cpu / wall


def main() -> None:
    medians, p99s, cpus = [], [], []
    for run in range(5):
        latencies, cpu_share = asyncio.run(one_run(run))
        latencies.sort()
        medians.append(statistics.median(latencies))
        p99s.append(latencies[int(len(latencies) * 0.99) - 1])
        cpus.append(cpu_share)
    target = INTERVAL * THRESHOLD + 1
    print(f"agents {AGENTS}, silenced {SILENCED}, interval {INTERVAL:g} s, threshold {THRESHOLD}, 5 runs")
    print(f"detection latency: median of medians {statistics.median(medians):.3f} s, "
          f"median p99 {statistics.median(p99s):.3f} s, worst p99 {max(p99s):.3f} s (target <= {target:g} s)")
    print(f"process CPU while {AGENTS} agents heartbeat (bench's own senders included): "
          f"median {statistics.median(cpus) * 100:.0f} % of one core")


if __name__ == "__main__":
    main()
