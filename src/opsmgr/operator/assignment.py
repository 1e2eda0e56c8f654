"""Which management server an agent (or gateway) reports to, and where it fails over: rendezvous hashing.

Each agent ranks the servers by a hash of (agent, server) and takes the top one as primary and the next ones as
failover. Agents spread evenly in expectation with no shared state, so thousands of handlers can decide at once
without racing; and when the replica count changes only the agents that must move do: scaling 2 -> 3 moves about
a third of them to the new server, scaling 3 -> 2 moves only the agents of the removed server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opsmgr.protocol.rendezvous import rank

FAILOVER_SERVERS = 1  # Operations Manager agents keep one failover server by default


@dataclass(frozen=True)
class Assignment:
    primary: str
    failover: tuple[str, ...]


def assign(member: str, servers: Sequence[str], pinned_primary: str | None = None,
           pinned_failover: Sequence[str] = (), failover_count: int = FAILOVER_SERVERS) -> Assignment | None:
    """The assignment of one agent or gateway; pinned servers from its spec win. None when there are no servers.

    A pinned server that does not exist (the group was scaled down) is honoured anyway: the person asked for it,
    and the Assigned condition says it is missing.
    """
    if not servers and pinned_primary is None:
        return None
    ranked = rank(member, servers)
    primary = pinned_primary or ranked[0]
    if pinned_failover:
        failover = tuple(s for s in pinned_failover if s != primary)
    else:
        failover = tuple(s for s in ranked if s != primary)[:failover_count]
    return Assignment(primary, failover)


def missing_servers(assignment: Assignment, servers: Sequence[str]) -> list[str]:
    """Servers the assignment names that the group does not run."""
    known = set(servers)
    return [s for s in (assignment.primary, *assignment.failover) if s not in known]


def load(assignments: Iterable[Assignment]) -> Counter[str]:
    """Agents per primary server."""
    return Counter(a.primary for a in assignments)
