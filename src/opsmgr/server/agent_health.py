"""The monitor states of the agents this server watches, and when to read them back from the operational DB (pure).

The server that watches an agent is the one that writes its `status.health`, so there is one writer per Agent. It
starts each agent from the operational DB (the latest state of every monitor, so the rollup survives restarts and
hand-overs), then follows the state changes its own ingest commits. A hand-over reads the DB twice: at once, and
again `settle` seconds later, because batches the agent sent to its previous server may commit after the first
read. Until the first read the rollup is not known (None), and nothing that depends on it is written.
"""

from __future__ import annotations

from collections.abc import Iterable

from opsmgr.db.health_model import HealthModel
from opsmgr.db.model import HealthState, StateChange

HANDOVER_SETTLE_SECONDS = 15.0


class AgentHealthBook:
    """One HealthModel per watched agent (by FQDN), with the DB reads still due for it."""

    def __init__(self, settle: float = HANDOVER_SETTLE_SECONDS) -> None:
        self.settle = settle
        self._models: dict[str, HealthModel] = {}
        self._known: set[str] = set()
        self._reads: dict[str, list[float]] = {}

    def __contains__(self, agent: str) -> bool:
        return agent in self._models

    def take(self, agent: str, now: float) -> None:
        """Start keeping `agent`: read its states from the DB now, and once more after `settle`."""
        self._models.setdefault(agent, HealthModel())
        self._reads[agent] = [now, now + self.settle]

    def drop(self, agent: str) -> None:
        self._models.pop(agent, None)
        self._known.discard(agent)
        self._reads.pop(agent, None)

    def reads_due(self, now: float) -> list[str]:
        return sorted(agent for agent, due in self._reads.items() if due[0] <= now)

    def read(self, agent: str, latest: Iterable[StateChange], now: float) -> bool:
        """The DB's latest states for `agent` arrived; True when the agent's rollup changed (or became known)."""
        model = self._models.get(agent)
        if model is None:
            return False  # dropped while the read was under way
        before = self.rollup(agent)
        for change in latest:
            model.apply(change)
        self._known.add(agent)
        left = [due for due in self._reads.get(agent, []) if due > now]
        if left:
            self._reads[agent] = left
        else:
            self._reads.pop(agent, None)
        return before is not model.overall()

    def committed(self, agent: str, changes: Iterable[StateChange]) -> bool:
        """State changes this server's ingest committed; True when the agent's rollup changed."""
        model = self._models.get(agent)
        if model is None:
            return False
        transitions = [model.apply(change) for change in changes]
        return agent in self._known and any(t is not None and t.agent_changed for t in transitions)

    def rollup(self, agent: str) -> HealthState | None:
        """The worst of the agent's monitors, None until its states were read from the DB."""
        model = self._models.get(agent)
        return model.overall() if model is not None and agent in self._known else None
