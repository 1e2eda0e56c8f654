"""Every item kind lands in the right databases exactly once, through a real server over real mTLS."""

from __future__ import annotations

import asyncio

from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.server.client import WAREHOUSE, AgentStream, ReplayingAgent, channel, owed
from tests.integration.server.conftest import AGENTS, Pki, ServerProcess, assert_exactly_once, count_rows


async def test_every_item_kind_lands_in_its_databases_exactly_once(
        running_server: ServerProcess, pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> None:
    agent = ReplayingAgent(running_server.agent_port, pki.agent())
    async with asyncio.timeout(60):
        await agent.run_session(new_batches=40)
    assert not agent.queue and not agent.rejected
    await assert_exactly_once(agent.items.generated, postgres_dsn, warehouse_dsn)


async def test_a_replayed_batch_is_acknowledged_as_already_committed_per_database(
        running_server: ServerProcess, pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> None:
    agent = ReplayingAgent(running_server.agent_port, pki.agent())
    async with asyncio.timeout(60):
        await agent.run_session(new_batches=10)
    async with channel(running_server.agent_port, pki.agent()) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        for batch in reversed(agent.history):  # replay order does not matter
            await stream.send(pb.AgentMessage(batch=batch))
        acks = await stream.acks_until(sum(len(owed(batch)) for batch in agent.history))
    assert {ack.outcome for ack in acks} == {pb.Ack.OUTCOME_ALREADY_COMMITTED}
    assert {(ack.seq, ack.database) for ack in acks} == {
        (batch.seq, database) for batch in agent.history for database in owed(batch)}
    await assert_exactly_once(agent.items.generated, postgres_dsn, warehouse_dsn)


async def test_a_replay_naming_the_warehouse_alone_is_written_there_alone(
        running_server: ServerProcess, pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> None:
    agent = ReplayingAgent(running_server.agent_port, pki.agent())
    batch = agent.new_batch(pb.LANE_BULK, 10).batch
    batch.databases[:] = [WAREHOUSE]
    async with channel(running_server.agent_port, pki.agent()) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        await stream.send(pb.AgentMessage(batch=batch))
        [ack] = await stream.acks_until(1)
    assert (ack.database, ack.outcome) == (WAREHOUSE, pb.Ack.OUTCOME_COMMITTED)
    assert (await count_rows(postgres_dsn))["event"] == (0, 0)
    assert (await count_rows(warehouse_dsn))["event"] == (5, 5)


async def test_agents_stream_concurrently_and_their_batches_share_transactions(
        running_server: ServerProcess, pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> None:
    agents = [ReplayingAgent(running_server.agent_port, pki.agent(name)) for name in AGENTS[:3]]
    async with asyncio.timeout(90):
        await asyncio.gather(*(a.run_session(new_batches=30, window=8) for a in agents))
    generated: dict[str, set[str]] = {}
    for agent in agents:
        for kind, keys in agent.items.generated.items():
            generated.setdefault(kind, set()).update(keys)
    await assert_exactly_once(generated, postgres_dsn, warehouse_dsn)
    metrics = running_server.metrics()
    assert 'opsmgr_acks_total{database="operational",outcome="committed"} 90.0' in metrics
    assert "opsmgr_batches_per_transaction_bucket" in metrics
