"""An agent refuses to run on a host that runs a management server or gateway (Operations Manager's rule: those
hosts are monitored by their own health service, and a second one would report the host twice).

Detection looks at the host's processes for `opsmgr server` or `opsmgr gateway`, however started (the console
script, `python -m opsmgr`, a container entrypoint). It needs no cooperation from the server, and finds a server
that crashed and is restarting only while it runs; a process in another PID namespace (another container) is a
different host in this model, so not seeing it is right.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

REFUSED_ROLES = ("server", "gateway")


@dataclass(frozen=True)
class ManagementProcess:
    pid: int
    role: str
    command: str


def role_of(cmdline: Sequence[str]) -> str | None:
    """`server` or `gateway` when `cmdline` runs that opsmgr subcommand, else None.

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
    subcommand = next((a for a in arguments[start:] if not a.startswith("-")), None)
    return subcommand if subcommand in REFUSED_ROLES else None


def find_management_processes(processes: Iterable[tuple[int, Sequence[str]]]) -> list[ManagementProcess]:
    return [ManagementProcess(pid, role, " ".join(cmdline)) for pid, cmdline in processes
            if (role := role_of(cmdline)) is not None]


def _host_processes() -> Iterable[tuple[int, Sequence[str]]]:
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if process.info["pid"] != os.getpid():
            yield process.info["pid"], cmdline


def refusal() -> str | None:
    """Why this agent must not start here, or None."""
    found = find_management_processes(_host_processes())
    if not found:
        return None
    first = found[0]
    return (f"this host runs an opsmgr management {first.role} (pid {first.pid}: {first.command}); an agent does "
            f"not run on a management server or gateway, which monitors its own host. Fix: run the agent on another "
            f"host, or stop the {first.role} here")
