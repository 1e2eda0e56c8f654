"""What a management server runs when it has Kubernetes access (`kubernetes` in its config): the Agent watch that
backs its directory and watcher, its Lease in the fleet, the Agent status writer, the AgentTask delivery and the
ManagementPack push. One ApiClient for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from kubernetes_asyncio import client as kube_client

from opsmgr.api.agent import Agent
from opsmgr.kubeio.client import open_api_client
from opsmgr.kubeio.kube import Kube
from opsmgr.server.agent_status import AgentStatusWriter
from opsmgr.server.channel import AgentChannel
from opsmgr.server.config import KubernetesConfig, ServerConfig
from opsmgr.server.fleet import LeaseMembership
from opsmgr.server.kube_watch import AgentCatalog, KubeAgentDirectory
from opsmgr.server.packs import PackDelivery
from opsmgr.server.tasks import TaskDispatcher
from opsmgr.server.watcher_service import WatcherService

log = logging.getLogger(__name__)

FIELD_MANAGER = "opsmgr-server"
SYNC_TIMEOUT_SECONDS = 30.0


def member_name(config: ServerConfig) -> str:
    """This server's name in the fleet: its Pod's name, which is what Agents name as their servers."""
    if config.kubernetes is not None and config.kubernetes.member:
        return config.kubernetes.member
    return config.name.split(".", 1)[0]


class ClusterLink:
    def __init__(self, api: kube_client.ApiClient, settings: KubernetesConfig, config: ServerConfig,
                 watcher: WatcherService, channel: AgentChannel) -> None:
        self.api = api
        self.kube = Kube(api, field_manager=FIELD_MANAGER)
        self.catalog = AgentCatalog(self.kube, namespace=settings.namespace, group=config.group)
        self.membership = LeaseMembership(self.kube, namespace=settings.namespace, group=config.group,
                                          member=member_name(config), lease_seconds=settings.lease_seconds,
                                          renew_seconds=settings.renew_seconds)
        self.status = AgentStatusWriter(self.kube, settings.namespace, self.catalog.bodies.get,
                                        heartbeat_every=timedelta(seconds=config.watcher.status_heartbeat_seconds))
        watcher.catalog, watcher.kube, watcher.status = self.catalog, self.kube, self.status
        self.tasks = TaskDispatcher(self.kube, namespace=settings.namespace, server=member_name(config),
                                    catalog=self.catalog, session_of=channel.by_agent.get)
        channel.tasks = self.tasks
        self.packs = PackDelivery(self.kube, namespace=settings.namespace, group=config.group, catalog=self.catalog,
                                  sessions=lambda: list(channel.by_agent.values()))
        channel.packs_of = self.packs.config_of
        self.packs.on_first_packs = self.tasks.agent_connected
        watcher.live = lambda: self.membership.live
        watcher.fleet_known = lambda: self.membership.observed.is_set() and self.catalog.synced

    @classmethod
    async def open(cls, config: ServerConfig, watcher: WatcherService, directory: KubeAgentDirectory,
                   on_approval_change: Callable[[], None],
                   channel: AgentChannel) -> tuple[ClusterLink, list[asyncio.Task[None]]]:
        """Connect, start the watches and the Lease, and wait until the first listing and fleet view are in."""
        assert config.kubernetes is not None
        link = cls(await open_api_client(config.kubernetes.kubeconfig), config.kubernetes, config, watcher, channel)
        directory.catalog = link.catalog

        def approval_changed(before: Agent | None, after: Agent | None) -> None:
            if before is None or after is None or before.status.approval != after.status.approval:
                on_approval_change()

        link.catalog.on_change(approval_changed)
        runs: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("agent-watch", link.catalog.informer.run()), ("fleet-lease", link.membership.run()),
            ("agent-status", link.status.run()), ("task-watch", link.tasks.informer.run()),
            ("task-delivery", link.tasks.run()), ("pack-watch", link.packs.informer.run()),
            ("pack-delivery", link.packs.run())]
        tasks = [asyncio.create_task(run, name=name) for name, run in runs]
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_SECONDS):
                await link.catalog.informer.synced.wait()
                await link.membership.observed.wait()
                await link.packs.informer.synced.wait()  # streams opened from now on get their packs in Welcome
        except TimeoutError:
            log.warning("Kubernetes watches not synced yet; the watcher waits for them", extra={"fields": {
                "namespace": config.kubernetes.namespace, "timeout_seconds": SYNC_TIMEOUT_SECONDS}})
        return link, tasks

    async def close(self) -> None:
        await self.tasks.close()
        await self.packs.close()
        await self.membership.leave()
        with contextlib.suppress(Exception):
            await self.api.close()
