"""The agent process's data path: the durable queue, the server connection and the "Send Queue % Used" monitor,
started together and stopped with a Goodbye."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from opsmgr.agent import host_role
from opsmgr.agent.collection import Collection
from opsmgr.agent.config import AgentConfig
from opsmgr.agent.connection import AgentFacts, ServerConnection
from opsmgr.agent.identity import IdentityError, IdentityFiles
from opsmgr.agent.queue import DiskQueue
from opsmgr.agent.queue_policy import QueueHealth, percent_used, queue_health
from opsmgr.agent.sink import HealthState, computer_key, performance, state_change

log = logging.getLogger(__name__)

SEND_QUEUE_COUNTER = ("Health Service", "Send Queue % Used")
SEND_QUEUE_MONITOR = "HealthService.SendQueuePercentUsed"
_HEALTH_META = "send_queue_health"
IDENTITY_POLL_SECONDS = 2.0


class AgentRefused(RuntimeError):
    """The agent must not run here; the message says why and what to do."""


class SendQueueMonitor:
    """Samples "Send Queue % Used" into the queue as performance data, and sends its health as a state change
    whenever it crosses 50 % (warning) or 60 % (critical). The last state is kept in the queue file, so a restart
    neither repeats nor misses a transition."""

    def __init__(self, queue: DiskQueue, fqdn: str) -> None:
        self.queue = queue
        self.object_key = computer_key(fqdn)

    async def check(self) -> QueueHealth:
        status = await self.queue.status()
        percent = percent_used(status.size_bytes, status.limit_bytes)
        health = queue_health(percent)
        stored = await self.queue.get_meta(_HEALTH_META)
        previous = QueueHealth(int(stored)) if stored else QueueHealth.HEALTHY
        now = datetime.now(UTC)
        items = [performance(now, object_key=self.object_key, object_name=SEND_QUEUE_COUNTER[0],
                             counter=SEND_QUEUE_COUNTER[1], instance="", value=round(percent, 2))]
        if health is not previous:
            items.append(state_change(now, object_key=self.object_key, monitor=SEND_QUEUE_MONITOR,
                                      old=HealthState(int(previous)), new=HealthState(int(health))))
        await self.queue.enqueue(items)
        if health is not previous:
            log.log(logging.WARNING if health is not QueueHealth.HEALTHY else logging.INFO,
                    "Send Queue %% Used is %.1f %%: %s", percent, health.name.lower())
            await self.queue.set_meta(_HEALTH_META, str(int(health)))
        return health

    async def run(self, interval_seconds: float) -> None:
        while True:
            await self.check()
            await asyncio.sleep(interval_seconds)


async def wait_for_identity(identity: IdentityFiles, stop: asyncio.Event,
                            poll_seconds: float = IDENTITY_POLL_SECONDS) -> bool:
    """Wait until the identity directory holds a usable identity; False when stopped first."""
    reported = ""
    while not stop.is_set():
        try:
            await asyncio.to_thread(identity.load)
            return True
        except IdentityError as error:
            if str(error) != reported:
                reported = str(error)
                log.warning("waiting for this agent's certificate: %s", error)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_seconds):
                await stop.wait()
    return False


async def run_agent(config: AgentConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set; raises AgentRefused before touching anything when this host must not run one."""
    if config.refuse_on_management_host:
        reason = await asyncio.to_thread(host_role.refusal)
        if reason is not None:
            raise AgentRefused(reason)
    identity = IdentityFiles(config.certificates.directory)
    if config.certificates.wait_for_identity and not await wait_for_identity(identity, stop):
        return
    await asyncio.to_thread(identity.load)  # a missing or mismatched identity fails now, with its fix
    queue = await DiskQueue.open(config.queue.path, config.queue.limit_bytes)
    log.info("agent %s starting: queue %s (epoch %s, limit %d bytes), primary %s", config.fqdn, queue.path,
             queue.epoch, queue.limit_bytes, config.servers.primary)
    # Collectors write into the queue; tasks and pushed packs arrive through the connection.
    settings = config.collection
    if "state_directory" not in settings.model_fields_set:  # keep collection state beside the queue by default
        settings = settings.model_copy(update={"state_directory": config.queue.path.parent / "collection"})
    collection = Collection(settings, fqdn=config.fqdn, placement=config.placement, sink=queue)
    connection = ServerConnection(config.connection_settings(), AgentFacts(config.fqdn, config.placement), queue,
                                  identity, task_handler=collection.tasks, config_listener=collection.apply_config)
    monitor = asyncio.create_task(SendQueueMonitor(queue, config.fqdn).run(config.health.send_queue_check_seconds))
    await collection.start()
    try:
        await connection.run(stop)
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        await collection.stop()
        await queue.close()
    log.info("agent %s stopped", config.fqdn)
