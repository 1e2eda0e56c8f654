"""Where the agent's RSS goes: the resident size after each step of `opsmgr agent`'s imports, in fresh interpreters.

Issue 9 gives the agent 50 MB; most of it is spent before the first sample, on imports. Each step imports everything
before it plus one library (the order the agent needs them in), in a new interpreter, and the median of `--runs`
readings is printed with the step's share. Cryptography is not among them: only the agent's short-lived identity
helper (`python -m opsmgr.agent.identity_helper`) loads it, and its peak is printed last. The baseline is a bare
interpreter measured in the same run. Shared library pages count in RSS, so a step's share includes the code pages
it maps.

    .venv/bin/python -m bench.bench_agent_imports [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

# (what it is, the import statement): cumulative, so each step's share is what it adds to the ones above.
STEPS: list[tuple[str, str]] = [
    ("python", "pass"),
    ("asyncio, hashlib without OpenSSL (as the agent)", "from opsmgr.agent.without_openssl import "
                                                         "import_without_openssl; import_without_openssl()"),
    ("sqlite3", "import sqlite3"),
    ("psutil", "import psutil"),
    ("grpc.aio", "from grpc import aio"),
    ("protobuf and the agent channel's messages", "import opsmgr.protocol.agent_channel_pb2"),
    ("pydantic (BaseModel)", "from pydantic import BaseModel"),
    ("the management pack models", "import opsmgr.api.management_pack"),
    ("the agent's queue, connection and collection", "import opsmgr.agent.queue, opsmgr.agent.connection, "
                                                     "opsmgr.agent.collection"),
    ("`opsmgr agent` itself (click, config)", "from opsmgr.cli import main; main.get_command(None, 'agent')"),
]

# What the helper process imports to load an identity or make a renewal's key and CSR.
HELPER_STEP = ["import opsmgr.agent.identity_helper", "from opsmgr.pki import build_csr, generate_private_key"]

READ_RSS = "import os; print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE'))"


def rss_after(statements: list[str]) -> int:
    code = "\n".join([*statements, READ_RSS])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh interpreters per step; the median is printed")
    args = parser.parse_args()

    previous = 0.0
    print(f"{'step':48s} {'RSS MB':>7s} {'adds MB':>8s}   (median of {args.runs} fresh interpreters)")
    for index, (label, _) in enumerate(STEPS):
        statements = [statement for _, statement in STEPS[:index + 1]]
        median = statistics.median(rss_after(statements) for _ in range(args.runs)) / 2**20
        print(f"{label:48s} {median:7.1f} {median - previous if index else median:8.1f}", flush=True)
        previous = median
    helper = statistics.median(rss_after(HELPER_STEP) for _ in range(args.runs)) / 2**20
    print(f"{'the identity helper, a process of its own':48s} {helper:7.1f}")
    print("goal (issue 9): the running agent <= 50 MB RSS; bench_agent_collection measures it collecting")


if __name__ == "__main__":
    main()
