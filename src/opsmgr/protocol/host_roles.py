"""Which opsmgr roles run on this host, for Operations Manager's rule that an agent never shares a host with a
management server or gateway (those hosts are monitored by their own health service; a second would report the
host twice). The agent refuses to start beside a server or gateway, and the gateway beside an agent.

Detection looks at the host's processes for `opsmgr <role>`, however started (the console script,
`python -m opsmgr`, a container entrypoint). A process in another PID namespace (another container) is a
different host in this model, so not seeing it is right.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class RoleProcess:
    pid: int
    role: str
    command: str


def opsmgr_subcommand(cmdline: Sequence[str]) -> str | None:
    """The opsmgr subcommand `cmdline` runs (`server`, `agent`, ...), or None when it is no opsmgr process.

    The subcommand is the first argument after the program (`.../opsmgr`) or after `-m opsmgr` that is not an
    option; options of the `opsmgr` group itself (`--version`, `-h`) take no value, so none is skipped wrongly.
    """
    arguments = list(cmdline)
    start = None
    for index, argument in enumerate(arguments):
        if os.path.basename(argument) == "opsmgr" or (
                argument == "opsmgr" and index > 0 and arguments[index - 1] == "-m"):
            start = index + 1
            break
        if argument == "-m" and index + 1 < len(arguments) and arguments[index + 1] in ("opsmgr", "opsmgr.cli"):
            start = index + 2
            break
    if start is None:
        return None
    return next((a for a in arguments[start:] if not a.startswith("-")), None)


def find_role_processes(processes: Iterable[tuple[int, Sequence[str]]], roles: Collection[str]) -> list[RoleProcess]:
    return [RoleProcess(pid, role, " ".join(cmdline)) for pid, cmdline in processes
            if (role := opsmgr_subcommand(cmdline)) in roles and role is not None]


def host_processes() -> Iterable[tuple[int, Sequence[str]]]:
    """(pid, command line) of every other process this host shows us."""
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if process.info["pid"] != os.getpid():
            yield process.info["pid"], cmdline
