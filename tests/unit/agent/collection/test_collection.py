"""The piece the data path plugs in: config from the server becomes a running plan; maintenance silences monitors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from opsmgr.agent.collection import Collection, CollectionSettings
from opsmgr.agent.counters import CounterReader, Reading
from opsmgr.agent.sink import ListSink
from opsmgr.api.management_pack import PerformanceCounter
from opsmgr.protocol import agent_channel_pb2 as pb

VALUES: list[float] = []


class Reader:
    async def read(self) -> list[Reading]:
        return [Reading("_Total", VALUES.pop(0))] if VALUES else []


async def reader_factory(counter: PerformanceCounter) -> CounterReader:
    return Reader()


def config(version: str, critical: float = 95) -> pb.AgentConfig:
    pack = {"metadata": {"name": "p"}, "spec": {
        "managementGroupRef": {"name": "g"}, "version": "1.0", "agentSelector": {"matchLabels": {"tier": "web"}},
        "monitors": [{"name": "cpu", "performance": {"object": "Processor", "counter": "% Processor Time",
                                                     "instance": "_Total"}, "criticalThreshold": critical}]}}
    return pb.AgentConfig(management_packs_json=json.dumps([pack]).encode(), config_version=version)


async def test_config_from_the_server_runs_for_matching_labels_and_maintenance_silences_the_monitor(
        tmp_path: Path) -> None:
    sink = ListSink()
    collection = Collection(CollectionSettings(state_directory=tmp_path, labels={"tier": "web"}),
                            fqdn="web01.contoso.test", placement="host", sink=sink, reader_factory=reader_factory)
    try:
        collection.apply_config(config("1"))
        job = collection.scheduler.monitor_job("p/cpu")
        assert job is not None
        collection.apply_config(config("1"))  # the same version again (a reconnect's Welcome): nothing restarts
        assert collection.scheduler.monitor_job("p/cpu") is job
        await asyncio.sleep(0)

        collection.set_maintenance(datetime.now(UTC) + timedelta(hours=1))
        VALUES.append(99)
        await job.sample()
        await asyncio.sleep(0.1)
        assert sink.items == []  # critical, but in maintenance: no state change, no alert

        collection.set_maintenance(None)
        VALUES.append(99)
        await job.sample()
        await asyncio.sleep(0.1)
        assert [i.WhichOneof("kind") for i in sink.items] == ["state", "alert"]

        collection.apply_config(config("2", critical=99.5))
        assert collection.scheduler.monitor_job("p/cpu") is not job
    finally:
        await collection.stop()


async def test_an_agent_without_the_packs_label_runs_nothing(tmp_path: Path) -> None:
    collection = Collection(CollectionSettings(state_directory=tmp_path), fqdn="db01.contoso.test",
                            placement="host", sink=ListSink(), reader_factory=reader_factory)
    try:
        collection.apply_config(config("1"))
        assert collection.scheduler.running == {"performance": 0, "monitors": 0, "log_files": 0}
    finally:
        await collection.stop()
