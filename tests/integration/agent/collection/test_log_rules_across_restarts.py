"""Log rules in a real agent process: both rotation styles across kill -9 restarts, every event exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PATTERN_LINES = ("a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2")


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as out:
        out.writelines(f"{line}\n" for line in lines)


def items(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def event_texts(path: Path) -> list[str]:
    return [i["event"]["description"] for i in items(path) if "event" in i]


class AgentProcess:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "collection_process.py"), str(self.tmp / "items.jsonl"),
            str(self.tmp / "state"), str(self.tmp / "packs.json"), stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            assert await self.process.stdout.readline() == b"ready\n"

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await self.process.wait() == 0


async def until_events(tmp: Path, expected: list[str]) -> None:
    for _ in range(200):
        if await asyncio.to_thread(event_texts, tmp / "items.jsonl") == expected:
            await asyncio.sleep(0.1)  # the position is saved right after the sink returns
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"events {await asyncio.to_thread(event_texts, tmp / 'items.jsonl')}, expected {expected}")


async def until_exists(path: Path) -> None:
    for _ in range(200):
        if await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def rename_rotate(log: Path) -> None:
    os.rename(log, log.with_name("app.log.1"))


def copytruncate_rotate(log: Path) -> None:
    os.rename(log.with_name("app.log.1"), log.with_name("app.log.2"))
    shutil.copyfile(log, log.with_name("app.log.1"))
    with open(log, "r+") as out:
        out.truncate(0)


def write_packs(tmp: Path, log: Path) -> None:
    pack = {"metadata": {"name": "apps"}, "spec": {
        "managementGroupRef": {"name": "g"}, "version": "1.0",
        "rules": [{"name": "app-lines", "event": {"logFile": str(log), "pattern": "^[abc][0-9]$", "level": "Error",
                                                  "eventId": 42},
                   "alert": {"severity": "Critical", "priority": "High", "name": "App line"}}]}}
    (tmp / "packs.json").write_text(json.dumps([pack]))


async def test_every_matching_line_arrives_once_through_rotations_and_kill_9(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "app.log"
    await asyncio.to_thread(log.parent.mkdir)
    await asyncio.to_thread(write_packs, tmp_path, log)
    await asyncio.to_thread(append, log, "a0 history is not replayed", "a9")
    agent = AgentProcess(tmp_path)

    await agent.start()
    await until_exists(tmp_path / "state")
    await asyncio.sleep(0.3)  # the tail takes its starting position at the end of the file
    await asyncio.to_thread(append, log, "a1", "noise", "a2")
    await until_events(tmp_path, ["a1", "a2"])
    await agent.kill()

    await asyncio.to_thread(append, log, "a3")  # written while the agent is down, then the file is renamed away
    await asyncio.to_thread(rename_rotate, log)
    await asyncio.to_thread(append, log, "b1")
    await agent.start()
    await until_events(tmp_path, ["a1", "a2", "a3", "b1"])
    await asyncio.to_thread(append, log, "b2")
    await until_events(tmp_path, ["a1", "a2", "a3", "b1", "b2"])
    await agent.kill()

    await asyncio.to_thread(append, log, "b3", "noise")  # down again; this time copytruncate
    await asyncio.to_thread(copytruncate_rotate, log)
    await asyncio.to_thread(append, log, "c1")
    await agent.start()
    await until_events(tmp_path, ["a1", "a2", "a3", "b1", "b2", "b3", "c1"])
    await asyncio.to_thread(append, log, "c2")
    await until_events(tmp_path, list(PATTERN_LINES))
    await agent.stop()

    collected = await asyncio.to_thread(items, tmp_path / "items.jsonl")
    events = [i["event"] for i in collected if "event" in i]
    alerts = [i["alert"] for i in collected if "alert" in i]
    assert [e["description"] for e in events] == list(PATTERN_LINES)
    assert {(e["source"], e["number"], e["level"], e["channel"]) for e in events} == {
        ("app-lines", "42", 2, str(log))}
    assert [a["description"] for a in alerts] == list(PATTERN_LINES)
    assert {(a["name"], a["severity"], a["priority"]) for a in alerts} == {("App line", 2, 2)}
    assert any("discovery" in i for i in collected)  # discovery ran on each start too
