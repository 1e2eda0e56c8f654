"""An agent refuses to run on a host that runs a management server or gateway; the detection itself lives in
`opsmgr.protocol.host_roles`, which the gateway shares for the mirror rule."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opsmgr.protocol.host_roles import RoleProcess, find_role_processes, host_processes, opsmgr_subcommand

REFUSED_ROLES = ("server", "gateway")


def role_of(cmdline: Sequence[str]) -> str | None:
    """`server` or `gateway` when `cmdline` runs that opsmgr subcommand, else None."""
    subcommand = opsmgr_subcommand(cmdline)
    return subcommand if subcommand in REFUSED_ROLES else None


def find_management_processes(processes: Iterable[tuple[int, Sequence[str]]]) -> list[RoleProcess]:
    return find_role_processes(processes, REFUSED_ROLES)


def refusal() -> str | None:
    """Why this agent must not start here, or None."""
    found = find_management_processes(host_processes())
    if not found:
        return None
    first = found[0]
    return (f"this host runs an opsmgr management {first.role} (pid {first.pid}: {first.command}); an agent does "
            f"not run on a management server or gateway, which monitors its own host. Fix: run the agent on another "
            f"host, or stop the {first.role} here")
