"""ManagementPack push (the talking half; `pack_rules` decides): a watch of the group namespace's ManagementPacks,
the packs each agent's Welcome carries, and a ConfigUpdate to every connected agent whose packs changed.

A pack created, changed or deleted makes every stream due; an Agent whose labels change makes its own stream due.
One loop looks at the due streams, so a burst of edits costs one pass. Each stream remembers the config version
it was sent (`AgentSession.config_version`) and gets a ConfigUpdate only when its version differs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from opsmgr.api.agent import Agent
from opsmgr.api.management_pack import ManagementPack
from opsmgr.kubeio.informer import Informer
from opsmgr.kubeio.kube import Kube
from opsmgr.server.kube_watch import AgentCatalog, custom_lister, fqdn_of
from opsmgr.server.pack_rules import PackConfig, Withheld, accept_pack, pack_config
from opsmgr.server.session import AgentSession

log = logging.getLogger(__name__)


class PackDelivery:
    """Keeps the group's valid packs and pushes each connected agent the ones that target it.

    `sessions()` are the live streams on this server.
    """

    def __init__(self, kube: Kube, *, namespace: str, group: str, catalog: AgentCatalog,
                 sessions: Callable[[], Iterable[AgentSession]]) -> None:
        self.namespace = namespace
        self.group = group
        self.catalog = catalog
        self.sessions = sessions
        self.informer = Informer("managementpacks", custom_lister(kube, namespace, "managementpacks"), self._event)
        self.packs: dict[str, ManagementPack] = {}
        self.updates_sent = 0
        self._withheld: dict[str, str] = {}  # pack -> reason last logged: a status write re-delivers the same pack
        # Configs by label set, for the packs as they are now: agents of one role share one computation.
        self._configs: dict[frozenset[tuple[str, str]], PackConfig] = {}
        self._due: set[str] = set()  # agent FQDNs to look at
        self._everyone = False
        self._wake = asyncio.Event()
        self._sending: dict[AgentSession, asyncio.Task[None]] = {}
        # Told when a stream welcomed without packs got its first ones (AgentTasks for it wait for that).
        self.on_first_packs: Callable[[AgentSession], None] = lambda _session: None
        catalog.on_change(self._agent_changed)

    def config_of(self, agent: str) -> PackConfig | None:
        """The packs of this agent now; None while the packs or the agent are not known yet (its Welcome then says
        nothing about packs, so the agent keeps what it runs, and it is sent its packs once they are known)."""
        if not self.informer.synced.is_set():
            return None
        found = self.catalog.get(agent)
        if found is None:
            return None
        labels = frozenset(found.metadata.labels.items())
        config = self._configs.get(labels)
        if config is None:
            config = self._configs[labels] = pack_config(self.packs.values(), found.metadata.labels)
        return config

    async def run(self) -> None:
        await self.informer.synced.wait()
        self._everyone = True  # streams welcomed before the first listing were sent no packs
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            everyone, due = self._everyone, self._due
            self._everyone, self._due = False, set()
            for session in list(self.sessions()):
                if session.agent is not None and (everyone or session.agent in due):
                    self._offer(session)

    async def close(self) -> None:
        for sending in list(self._sending.values()):
            sending.cancel()
        await asyncio.gather(*self._sending.values(), return_exceptions=True)

    def _offer(self, session: AgentSession) -> None:
        assert session.agent is not None
        if session.config_version is None or session in self._sending:
            # Not welcomed yet: its Welcome carries the newest packs. Or a send is under way: the stream is looked
            # at again when it is done.
            return
        config = self.config_of(session.agent)
        if config is None or config.version == session.config_version:
            return
        # Beside the loop: a stream whose agent reads slowly holds up only its own update.
        sending = asyncio.create_task(self._send(session, config), name=f"packs-{session.session_id}")
        self._sending[session] = sending

    async def _send(self, session: AgentSession, config: PackConfig) -> None:
        first = not session.config_version
        try:
            await session.send_config(config)
            self.updates_sent += 1
            log.info("management packs sent", extra={"fields": session.fields(
                config_version=config.version, packs=list(config.packs))})
            if first:
                self.on_first_packs(session)
        finally:
            del self._sending[session]
            if session.agent is not None:
                self._due_agent(session.agent)  # changed again meanwhile? the next pass sends the newest

    def _event(self, kind: str, body: dict[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name", ""))
        accepted = None if kind == "DELETED" else accept_pack(body, namespace=self.namespace, group=self.group)
        if isinstance(accepted, Withheld):
            if self._withheld.get(name) != accepted.reason:
                self._withheld[name] = accepted.reason
                log.warning("management pack withheld", extra={"fields": {
                    "managementpack": f"{self.namespace}/{name}", "reason": accepted.reason}})
            accepted = None
        else:
            self._withheld.pop(name, None)
        before = self.packs.pop(name, None)
        if accepted is not None:
            self.packs[name] = accepted
        if before is None and accepted is None:
            return  # neither pushed before nor now (another group's pack, or one still invalid)
        if before is not None and accepted is not None and before.spec == accepted.spec:
            return  # a status write: nothing an agent runs changed
        self._configs.clear()
        self._everyone = True
        self._wake.set()

    def _agent_changed(self, before: Agent | None, after: Agent | None) -> None:
        # Targeting follows the Agent's labels; an Agent that appears after its stream opened gets its packs then.
        if after is not None and (before is None or before.metadata.labels != after.metadata.labels
                                  or fqdn_of(before) != fqdn_of(after)):
            self._due_agent(fqdn_of(after))

    def _due_agent(self, agent: str) -> None:
        self._due.add(agent)
        self._wake.set()
