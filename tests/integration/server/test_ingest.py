"""Every item kind lands in the right databases exactly once, through a real server over real mTLS."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg

from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.server.client import OPERATIONAL, WAREHOUSE, AgentStream, ReplayingAgent, channel, owed, stamp
from tests.integration.server.conftest import (
    AGENTS,
    MakeServer,
    Pki,
    ServerProcess,
    assert_exactly_once,
    count_rows,
)


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


async def test_a_batch_the_database_refuses_is_rejected_alone_and_the_batches_written_with_it_are_not(
        make_server: MakeServer, pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> None:
    # One writer taking big groups, so the refused batch shares its transaction with other agents' batches.
    server = make_server(writers_per_database=1, batches_per_transaction=64)
    server.start()
    others = [ReplayingAgent(server.agent_port, pki.agent(name)) for name in AGENTS[1:3]]
    await others[0].run_session(new_batches=2)  # the schema exists now
    conn = await asyncpg.connect(postgres_dsn)
    try:  # a rule of the database's own that our validation cannot know: the row is refused by PostgreSQL itself
        await conn.execute("ALTER TABLE events ADD CONSTRAINT refuses_poison CHECK (description <> 'poison')")
    finally:
        await conn.close()
    poison = pb.DataBatch(epoch=str(uuid.uuid4()), seq=0, lane=pb.LANE_BULK, items=[pb.Item(event=pb.Event(
        logged_at=stamp(datetime.now(UTC)), object_key="poison:1", channel="syslog", source="test", level=3,
        description="poison"))])
    async with channel(server.agent_port, pki.agent(AGENTS[0])) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        flowing = asyncio.gather(*(agent.run_session(new_batches=40, window=16) for agent in others))
        await asyncio.sleep(0.3)  # mid-flow
        await stream.send(pb.AgentMessage(batch=poison))
        acks = {ack.database: ack for ack in await stream.acks_until(2, within=60)}
        async with asyncio.timeout(90):
            await flowing
    assert acks[OPERATIONAL].outcome == pb.Ack.OUTCOME_REJECTED, acks[OPERATIONAL]
    assert "refuses_poison" in acks[OPERATIONAL].reason
    assert acks[WAREHOUSE].outcome == pb.Ack.OUTCOME_COMMITTED, "the warehouse has no such rule"
    for agent in others:
        assert not agent.queue and not agent.rejected and agent.deferred == 0, "nobody else paid for it"
    events = set().union(*(agent.items.generated["event"] for agent in others))
    assert (await count_rows(postgres_dsn))["event"] == (len(events), len(events))
    assert (await count_rows(warehouse_dsn))["event"] == (len(events) + 1, len(events) + 1)
    assert "refused a batch's data" in server.log_path.read_text()
