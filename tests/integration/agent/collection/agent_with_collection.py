"""A real agent process for tests against a real server: the data path (`DiskQueue`, `ServerConnection`) with
`Collection` plugged in the way `service.run_agent` is to wire it (queue as the sink, the task runner as the task
handler, the config listener for packs). Packs come from a file here: the servers of these tests have no
Kubernetes access, so they push none (with it, `apply_config` receives them from Welcome and ConfigUpdate, and
`opsmgr agent` itself is the process to test, as tests/integration/tasks does).

    python agent_with_collection.py AGENT_YAML COLLECTION_YAML [PACKS_JSON]
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import yaml

from opsmgr.agent.collection import Collection, CollectionSettings
from opsmgr.agent.config import AgentConfig, load_config
from opsmgr.agent.connection import AgentFacts, ServerConnection
from opsmgr.agent.identity import IdentityFiles
from opsmgr.agent.queue import DiskQueue
from opsmgr.protocol import agent_channel_pb2 as pb


async def main(config: AgentConfig, settings: CollectionSettings, packs: bytes | None) -> None:
    identity = IdentityFiles(config.certificates.directory)
    await asyncio.to_thread(identity.load)
    queue = await DiskQueue.open(config.queue.path, config.queue.limit_bytes)
    collection = Collection(settings, fqdn=config.fqdn, placement=config.placement, sink=queue)
    connection = ServerConnection(config.connection_settings(), AgentFacts(config.fqdn, config.placement), queue,
                                  identity, task_handler=collection.tasks, config_listener=collection.apply_config)
    await collection.start()
    if packs is not None:
        collection.apply_config(pb.AgentConfig(management_packs_json=packs, config_version="local"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await connection.run(stop)
    finally:
        await collection.stop()
        await queue.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    agent_config = load_config(Path(sys.argv[1]))
    collection_settings = CollectionSettings.model_validate(yaml.safe_load(Path(sys.argv[2]).read_text()))
    pack_file = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    asyncio.run(main(agent_config, collection_settings, pack_file.read_bytes() if pack_file else None))
