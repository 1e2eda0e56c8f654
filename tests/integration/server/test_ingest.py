"""Every item kind lands in the right databases exactly once, through a real server over real mTLS."""

from __future__ import annotations

import asyncio

from tests.integration.server.client import AgentStream, ReplayingAgent, channel
from tests.integration.server.conftest import Pki, ServerProcess, count_rows
from opsmgr.protocol import agent_channel_pb2 as pb

OPERATIONAL_KINDS = ("event", "performance", "state", "alert", "discovery")
WAREHOUSE_KINDS = ("event", "performance", "state", "alert")  # alerts by the periodic sync


async def wait_for_alert_sync(dsn: str, expected: int, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (await count_rows(dsn)).get("alert", (0, 0))[0] >= expected:
            return
        await asyncio.sleep(0.2)


async def test_every_item_kind_lands_in_its_databases_exactly_once(
        running_server: ServerProcess, pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> None:
    agent = ReplayingAgent(running_server.agent_port, pki.agent())
    await asyncio.wait_for(agent.run_session(new_batches=40), timeout=60)
    assert not agent.queue and not agent.rejected
    # Sent again on purpose: every database answers ALREADY_COMMITTED and nothing doubles.
    replay = ReplayingAgent(running_server.agent_port, pki.agent(), epoch=agent.epoch)
    async with channel(running_server.agent_port, pki.agent()) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        await stream.send(pb.AgentMessage(batch=pb.DataBatch(epoch=agent.epoch, seq=0, lane=pb.LANE_BULK,
                                                             items=agent.items.bulk(0))))
    del replay
    generated = {kind: len(keys) for kind, keys in agent.items.generated.items()}
    operational = await count_rows(postgres_dsn)
    for kind in OPERATIONAL_KINDS:
        assert operational[kind] == (generated[kind], generated[kind]), kind
    await wait_for_alert_sync(warehouse_dsn, generated["alert"])
    warehouse = await count_rows(warehouse_dsn)
    for kind in WAREHOUSE_KINDS:
        assert warehouse[kind] == (generated[kind], generated[kind]), kind
    assert "discovery" not in warehouse
