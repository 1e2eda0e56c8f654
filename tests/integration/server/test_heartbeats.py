"""The server measures each heartbeat's delay from the agent's sent_at to recording it, for /metrics."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

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
