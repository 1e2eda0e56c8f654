"""Kills what a local runtime left behind when it died without stopping its Pods (SIGKILL, a crash).

`python -m opsmgr.dev.runtime_reaper` reads `+<pgid>` and `-<pgid>` lines on stdin from the runtime, which
starts it and keeps the pipe open; at end of input (the runtime exited, however) it SIGKILLs every process group
still listed. PR_SET_PDEATHSIG alone kills only each container's main process; this covers what those started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def follow(lines: list[str] | None = None) -> set[int]:
    """The process groups still running when the input ends."""
    groups: set[int] = set()
    for line in lines if lines is not None else sys.stdin:
        sign, number = line[:1], line[1:].strip()
        if not number.isdigit() or int(number) <= 1:
            continue
        if sign == "+":
            groups.add(int(number))
        elif sign == "-":
            groups.discard(int(number))
    return groups


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the runtime must not end the watch early
    for group in follow():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


if __name__ == "__main__":
    main()
