"""Each monitor's latest state, read back from the operational DB's `state_changes` (asyncpg).

A management server that starts, or takes an agent over, rebuilds the agent's health model from here; the state
changes it ingests afterwards keep it current.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from opsmgr.db.model import HealthState, StateChange

_LATEST = """
SELECT DISTINCT ON (agent, object_key, monitor) agent, changed_at, object_key, monitor, old_state, new_state
FROM state_changes WHERE agent = any($1::text[])
ORDER BY agent, object_key, monitor, changed_at DESC
"""


async def latest_states(conn: asyncpg.Connection, agents: Sequence[str]) -> dict[str, list[StateChange]]:
    """The latest state change of every (object, monitor) of each agent (by FQDN); agents without any are absent."""
    found: dict[str, list[StateChange]] = {}
    for row in await conn.fetch(_LATEST, list(agents)):
        found.setdefault(row["agent"], []).append(StateChange(
            row["changed_at"], row["object_key"], row["monitor"], HealthState(row["old_state"]),
            HealthState(row["new_state"])))
    return found
