"""The mirror of the agent's rule: a gateway refuses to run on a host that runs an agent (that host's health
service would then be reported twice, once by its agent and once by the gateway that monitors its own host)."""

from __future__ import annotations

from opsmgr.protocol.host_roles import find_role_processes, host_processes

REFUSED_ROLES = ("agent",)


def refusal() -> str | None:
    """Why this gateway must not start here, or None."""
    found = find_role_processes(host_processes(), REFUSED_ROLES)
    if not found:
        return None
    first = found[0]
    return (f"this host runs an opsmgr agent (pid {first.pid}: {first.command}); a gateway does not share a host "
            "with an agent. Fix: run the gateway on another host, or remove the agent from this one")
