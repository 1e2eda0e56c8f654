"""A real agent process for tests: runs `Collection` on the packs in a file and appends every item it is handed
to a JSON-lines file (fsynced before the sink returns, like the durable queue). Stops on SIGTERM.

    python collection_process.py ITEMS_FILE STATE_DIR PACKS_JSON_FILE
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from google.protobuf.json_format import MessageToDict

from opsmgr.agent.collection import Collection, CollectionSettings
from opsmgr.protocol import agent_channel_pb2 as pb


async def main(out: TextIO, state_dir: Path, packs: bytes) -> None:
    async def sink(items: Sequence[pb.Item]) -> None:
        out.writelines(json.dumps(MessageToDict(item)) + "\n" for item in items)
        out.flush()
        os.fsync(out.fileno())

    settings = CollectionSettings(state_directory=state_dir, log_poll_seconds=0.05,
                                  discovery_interval_seconds=3600)
    collection = Collection(settings, fqdn="web01.contoso.test", placement="host", sink=sink)
    await collection.start()
    collection.apply_config(pb.AgentConfig(management_packs_json=packs, config_version="1"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await collection.stop()


if __name__ == "__main__":
    with open(sys.argv[1], "a") as items_file:
        asyncio.run(main(items_file, Path(sys.argv[2]), Path(sys.argv[3]).read_bytes()))
