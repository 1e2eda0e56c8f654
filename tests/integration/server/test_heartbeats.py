"""The server measures each heartbeat's delay from the agent's sent_at to recording it, for /metrics, and records
heartbeats at once even while the batches before them on the stream wait for a full writer pipeline."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.limits import MAX_BATCH_ITEMS
from tests.integration.server.client import OPERATIONAL, WAREHOUSE, AgentStream, ReplayingAgent, channel, stamp
from tests.integration.server.conftest import MakeServer, Pki, ServerProcess, assert_exactly_once


def delay_series(metrics: str) -> dict[str, float]:
    """The heartbeat delay histogram's samples, by name suffix and bucket bound."""
    series = {}
    for name, labels, value in re.findall(r'^opsmgr_heartbeat_delay_seconds_(\w+)(\{[^}]*\})? (\S+)$', metrics,
                                          re.MULTILINE):
        series[f"{name}{labels}"] = float(value)
    return series


def gauge(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


async def heartbeats_recorded(server: ServerProcess, count: int) -> None:
    async with asyncio.timeout(60):
        for _ in range(600):  # polled: the server is another process
            if delay_series(server.metrics()).get("count", 0) >= count:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the server did not record {count} heartbeats")


async def test_a_heartbeat_overtakes_a_batch_waiting_for_a_full_pipeline_and_every_item_lands_once(
        make_server: MakeServer, pki: Pki, postgres_dsn: str, warehouse_dsn: str) -> None:
    # The smallest operational pipeline: one full batch fills it, the next must wait for room.
    server = make_server(operational_queue_items=MAX_BATCH_ITEMS)
    server.start()
    agent = ReplayingAgent(server.agent_port, pki.agent())
    await agent.run_session(new_batches=2)  # the schema exists and the pools are open
    writing, waiting = (agent.new_batch(pb.LANE_BULK, MAX_BATCH_ITEMS).batch for _ in range(2))
    blocker = await asyncpg.connect(postgres_dsn)
    stuck = blocker.transaction()
    await stuck.start()
    # Every operational commit claims its batch in committed_batches: held here, the first batch stays in its
    # writer and fills the pipeline, so the second cannot enter it. Readers are not blocked.
    await blocker.execute("LOCK TABLE committed_batches IN SHARE MODE")
    try:
        async with channel(server.agent_port, pki.agent()) as chan:
            stream = AgentStream(chan)
            await stream.hello(epoch=agent.epoch)
            await stream.send(pb.AgentMessage(batch=writing))
            await stream.send(pb.AgentMessage(batch=waiting))
            await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=1, sent_at=stamp(datetime.now(UTC)))))
            await heartbeats_recorded(server, 1)
            # Recorded while the batch sent before it is still outside the pipeline, unacknowledged.
            metrics = server.metrics()
            assert gauge(metrics, 'opsmgr_ingest_queued_items{database="operational"}') == MAX_BATCH_ITEMS
            assert gauge(metrics, "opsmgr_parked_batch_bytes") > 0
            claimed = await blocker.fetchval("SELECT count(*) FROM committed_batches WHERE epoch = $1::uuid "
                                             "AND batch_seq = ANY($2::bigint[])", agent.epoch,
                                             [writing.seq, waiting.seq])
            assert claimed == 0
            await stuck.rollback()
            acks = await stream.acks_until(4, within=60)
    finally:
        await blocker.close()
    assert {(ack.seq, ack.database, ack.outcome) for ack in acks} == {
        (batch.seq, database, pb.Ack.OUTCOME_COMMITTED) for batch in (writing, waiting)
        for database in (OPERATIONAL, WAREHOUSE)}
    assert gauge(server.metrics(), "opsmgr_parked_batch_bytes") == 0, "the parked batch gave its budget back"
    await assert_exactly_once(agent.items.generated, postgres_dsn, warehouse_dsn)


async def test_heartbeat_delay_is_observed_from_sent_at_and_a_clock_ahead_counts_as_none(
        running_server: ServerProcess, pki: Pki) -> None:
    async with channel(running_server.agent_port, pki.agent()) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=1)))  # no sent_at: nothing to measure
        now = datetime.now(UTC)
        await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=2, sent_at=stamp(now + timedelta(hours=1)))))
        await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=3, sent_at=stamp(now - timedelta(seconds=3)))))
        # The stream is read in order: once two delays are counted, all three heartbeats were handled.
        async with asyncio.timeout(30):
            for _ in range(300):
                if delay_series(running_server.metrics()).get("count") == 2:
                    break
                await asyncio.sleep(0.1)
    series = delay_series(running_server.metrics())
    assert series['bucket{le="0.001"}'] == 1  # the agent whose clock runs ahead
    assert series['bucket{le="2.0"}'] == 1 and series['bucket{le="+Inf"}'] == 2
    assert series["sum"] >= 3.0  # the backdated one waited at least the three seconds it was backdated


async def test_a_heartbeat_sent_at_no_clock_can_show_is_ignored_and_the_stream_stays(
        running_server: ServerProcess, pki: Pki) -> None:
    # Found by fuzzing: ToNanoseconds raised ValueError, the stream ended UNKNOWN and the server logged an error.
    async with channel(running_server.agent_port, pki.agent()) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        for seq, moment in enumerate([Timestamp(seconds=2**63 - 1), Timestamp(seconds=-(2**63)),
                                      Timestamp(seconds=0, nanos=-1)]):
            await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=seq, sent_at=moment)))
        await stream.send(pb.AgentMessage(batch=pb.DataBatch(epoch="not a uuid", seq=0, lane=pb.LANE_BULK)))
        reply = await stream.receive(within=30)  # read in order: the heartbeats were handled before this answer
        assert reply is not None and reply.ack.outcome == pb.Ack.OUTCOME_REJECTED, reply
    assert not [line for line in running_server.log_lines() if line["level"] == "error"]
