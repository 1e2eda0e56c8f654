"""A management server that is told to stop (SIGTERM, as a rolling update does) hands its agents on at once."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import grpc
from grpc import aio

from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.server.client import AgentStream, channel
from tests.integration.server.conftest import Pki, ServerProcess


async def test_sigterm_ends_open_streams_with_unavailable_saying_the_server_stops_and_exits_cleanly(
        running_server: ServerProcess, pki: Pki) -> None:
    async with channel(running_server.agent_port, pki.agent()) as chan:
        stream = AgentStream(chan)
        await stream.hello()
        await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=1)))
        assert running_server.process is not None
        running_server.process.send_signal(signal.SIGTERM)
        # Before, the stream stayed open (and useless) for the whole gRPC grace period and ended CANCELLED; an
        # agent now hears why and dials its next server.
        with contextlib.suppress(aio.AioRpcError):
            assert await stream.receive(within=30) is None
        code, details = await stream.status()
    assert code is grpc.StatusCode.UNAVAILABLE, (code, details)
    assert "stopping" in details and "connect to another" in details, details
    assert await asyncio.to_thread(running_server.process.wait, 30) == 0
    lines = running_server.log_lines()
    assert [line for line in lines if line["msg"] == "stream closed: server stopping"], running_server.log_tail()
    assert not [line for line in lines if line["level"] in ("warning", "error")], running_server.log_tail()
