"""`make bench`: every benchmark in bench/, one after the other, each printing its figures and its own baseline.

    .venv/bin/python -m bench [--mode short|full]

short (the default, a few minutes): smaller sizes and fewer runs; the fleet is 1,000 agents heartbeating and
sending every 10 s (the message rate of 6,000 agents at Operations Manager's 60 s). full: each benchmark's own
defaults and the issue's sizes (10,000 agents at 60 s; 100 agents replaying 10,000 queued items each, where short
mode queues 1,000 each). A bench/bench_*.py not listed here runs with its defaults
in full mode, so a new benchmark is never silently left out. Benchmarks run one at a time: they share 2 CPUs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# Arguments per benchmark and mode; None leaves a benchmark out of that mode.
PLAN: dict[str, dict[str, list[str] | None]] = {
    "bench_pki": {"short": [], "full": []},
    "bench_agent_queue": {"short": [], "full": []},
    "bench_watcher": {"short": [], "full": []},
    "bench_ingest": {"short": ["--batches", "50", "--runs", "3"], "full": []},
    "bench_server_ingest": {"short": ["--batches", "20", "--runs", "3"], "full": []},
    "bench_agent_collection": {"short": ["--seconds", "20", "--warmup", "5"], "full": []},
    "bench_agent_imports": {"short": [], "full": []},
    "bench_operator": {"short": ["100"], "full": ["10000"]},
    "bench_fleet": {"short": ["--agents", "1000", "--heartbeat-seconds", "10", "--batch-seconds", "10",
                              "--steady-seconds", "30", "--runs", "3"],
                    "full": ["--agents", "10000", "--steady-seconds", "120", "--runs", "3"]},
    "bench_replay": {"short": ["--agents", "100", "--items", "1000"], "full": []},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("short", "full"), default="short")
    mode = parser.parse_args().mode
    found = sorted(path.stem for path in Path(__file__).parent.glob("bench_*.py"))
    failed = []
    for name in found:
        arguments = PLAN.get(name, {"short": None, "full": []})[mode]
        if arguments is None:
            print(f"== {name}: not in {mode} mode", flush=True)
            continue
        print(f"== {name} {' '.join(arguments)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}", *arguments])
        print(f"== {name}: {'done' if code == 0 else f'FAILED ({code})'} in {time.perf_counter() - started:.0f} s\n",
              flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
