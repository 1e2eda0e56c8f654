"""The server measures each heartbeat's delay from the agent's sent_at to recording it, for /metrics."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.server.client import AgentStream, channel, stamp
from tests.integration.server.conftest import Pki, ServerProcess


def delay_series(metrics: str) -> dict[str, float]:
    """The heartbeat delay histogram's samples, by name suffix and bucket bound."""
    series = {}
    for name, labels, value in re.findall(r'^opsmgr_heartbeat_delay_seconds_(\w+)(\{[^}]*\})? (\S+)$', metrics,
                                          re.MULTILINE):
        series[f"{name}{labels}"] = float(value)
    return series


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
