"""Rendezvous (highest-random-weight) hashing: which of a set of servers a member belongs to, with no shared state.

Each member ranks the servers by a hash of (member, server). The operator takes the top of an agent's ranking as
its primary server; the management servers take the top *live* server as the one that watches the agent, so in a
healthy fleet the watcher is the server the agent is connected to, and when a server dies only its members move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(member: str, server: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\x00{server}".encode(), digest_size=8).digest(), "big")


def rank(member: str, servers: Iterable[str]) -> list[str]:
    """`servers` in this member's order of preference."""
    return sorted(servers, key=lambda server: (-score(member, server), server))
