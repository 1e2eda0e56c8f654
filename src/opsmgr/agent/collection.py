"""Collection as one piece the data path plugs in: discovery, the rule scheduler and the task runner.

The agent process creates one `Collection` with the `collection:` section of its configuration file and the
durable queue as the item sink, then wires three calls (see `service.run_agent`):
    collection = Collection(config.collection, fqdn=config.fqdn, placement=config.placement, sink=queue)
    ServerConnection(..., task_handler=collection.tasks, config_listener=collection.apply_config)
    await collection.start() ... await collection.stop()
`apply_config` takes Welcome.config and every ConfigUpdate.config: the packs in it become the plan the scheduler
runs, without a restart. The task runner answers TaskRequests within the local allow-list in `collection.tasks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from opsmgr.agent.counters import open_reader
from opsmgr.agent.discovery import InventoryDiscovery
from opsmgr.agent.packs import CollectionPlan, plan_from_json
from opsmgr.agent.scheduler import Context, ReaderFactory, RuleScheduler
from opsmgr.agent.sink import CoalescingSink, ItemSink, computer_key
from opsmgr.agent.tasks import TaskRunner, TaskSettings
from opsmgr.protocol import agent_channel_pb2 as pb

log = logging.getLogger(__name__)


class CollectionSettings(BaseModel):
    """The agent configuration's `collection:` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_directory: Path = Path("/var/lib/opsmgr/agent/collection")
    """Where log-file positions and the last inventory are kept across restarts (a persistent volume in pods)."""
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    """This agent's labels, for the agentSelector of packs and overrides (the Agent resource's labels)."""
    discovery_interval_seconds: Annotated[float, Field(ge=30, le=86_400)] = 600.0
    log_poll_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    """The local allow-list: the only commands tasks may run, whatever the packs say."""


class Collection:
    def __init__(self, settings: CollectionSettings, *, fqdn: str, placement: str, sink: ItemSink,
                 reader_factory: ReaderFactory = open_reader) -> None:
        self.settings = settings
        self.fqdn = fqdn
        self.sink = CoalescingSink(sink)
        sink = self.sink
        self._maintenance_until: datetime | None = None
        object_key = computer_key(fqdn)
        self.tasks = TaskRunner(settings.tasks, sink=sink, object_key=object_key)
        self.context = Context(sink, object_key, self.in_maintenance, reader_factory)
        self.scheduler = RuleScheduler(self.context, settings.state_directory, tasks=self.tasks,
                                       log_poll_seconds=settings.log_poll_seconds)
        self.discovery = InventoryDiscovery(fqdn, placement, sink, settings.state_directory,
                                            interval_seconds=settings.discovery_interval_seconds)
        self._discovery_task: asyncio.Task[None] | None = None
        self._config_version: str | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.settings.state_directory.mkdir, parents=True, exist_ok=True)
        self._discovery_task = asyncio.create_task(self.discovery.run(), name="collect:discovery")

    def apply_config(self, config: pb.AgentConfig) -> None:
        """The connection's config listener: run the packs of Welcome or ConfigUpdate, if they changed."""
        if config.config_version and config.config_version == self._config_version:
            return
        if not config.management_packs_json:
            return  # the server says nothing about packs (it sends "[]" to remove them all): keep what runs
        self.apply_plan(plan_from_json(config.management_packs_json, self.settings.labels))
        self._config_version = config.config_version or None

    def apply_plan(self, plan: CollectionPlan) -> None:
        self.scheduler.apply(plan)
        log.info("collection plan: packs %s; running %s%s", dict(plan.versions), self.scheduler.running,
                 f"; {len(plan.problems)} problem(s) reported as events" if plan.problems else "")

    def set_maintenance(self, until: datetime | None) -> None:
        """Maintenance until `until` (None: none); monitors report nothing while it lasts."""
        self._maintenance_until = until

    def in_maintenance(self, now: datetime) -> bool:
        return self._maintenance_until is not None and now < self._maintenance_until

    async def stop(self) -> None:
        if self._discovery_task is not None:
            self._discovery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery_task
        await self.scheduler.close()
        await self.tasks.close()


