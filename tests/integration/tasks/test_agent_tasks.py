"""AgentTasks end to end: the session's real API server, real PostgreSQL, two real `opsmgr server` processes with
Kubernetes access (the servers' own Role), and a real `opsmgr agent` process (collection on, with its real task
runner and allow-list). What is checked is what `kubectl get agenttask -o yaml` and `kubectl describe` show.

The agent has no pack of its own: it learns the tasks from the pack its server pushes, and the server resolves the
same pack from the API server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opsmgr.kubeio.kube import Kube
from opsmgr.protocol import agent_channel_pb2 as pb
from tests.integration.agent.datapath.conftest import AgentProcess
from tests.integration.server.client import AgentStream, channel
from tests.integration.server.conftest import GROUP, Pki, ServerProcess
from tests.integration.watcher.conftest import Fleet, create_agents, fqdn, until

pytestmark = pytest.mark.timeout(300)

ECHO = os.path.realpath(shutil.which("echo") or "/bin/echo")
RM = os.path.realpath(shutil.which("rm") or "/bin/rm")
AGENT = "web01"  # its certificate and FQDN are make_agent's: web01.contoso.test
PACK = "linux-tasks"


def pack_spec(victim: Path) -> dict[str, Any]:
    return {"managementGroupRef": {"name": GROUP}, "version": "1.0.0", "tasks": [
        {"name": "say", "command": ECHO, "arguments": ["hello", "{who}"],
         "parameters": [{"name": "who", "required": True}], "timeoutSeconds": 30},
        {"name": "wipe", "command": RM, "arguments": ["-f", str(victim)], "timeoutSeconds": 30},
    ]}


def start_collecting_agent(agent: AgentProcess, settings: dict[str, Any]) -> None:
    """`opsmgr agent` with collection on: its task runner answers the server's requests."""
    agent.config["collection"] = settings
    agent.start()


def agent_task(namespace: str, name: str, task: str, **parameters: str) -> dict[str, Any]:
    return {"apiVersion": "opsmgr.io/v1alpha1", "kind": "AgentTask",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"task": {"managementPack": PACK, "name": task}, "agent": AGENT,
                     "parameters": [{"name": key, "value": value} for key, value in parameters.items()]}}


async def finished(kube: Kube, namespace: str, name: str, server: ServerProcess,
                   agent: AgentProcess) -> dict[str, Any]:
    """The AgentTask once its phase is final, as `kubectl get -o yaml` shows it."""
    async def read() -> dict[str, Any] | None:
        body = await kube.get("opsmgr.io/v1alpha1", "AgentTask", namespace, name)
        phase = ((body or {}).get("status") or {}).get("phase")
        return body if phase in ("Succeeded", "Failed", "TimedOut") else None
    try:
        found: dict[str, Any] = await until(read, 90, f"AgentTask {name} finished")
    except TimeoutError:
        pytest.fail(f"AgentTask {name} did not finish.\nserver:\n{server.log_tail(60)}\nagent:\n{agent.log()[-4000:]}")
    return found


async def events_of(kube: Kube, namespace: str, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in await kube.list("v1", "Event", namespace)
            if e["involvedObject"].get("kind") == "AgentTask" and e["involvedObject"].get("name") == name]


def file_exists(path: Path) -> bool:
    return path.exists()


async def test_agent_tasks_round_trip_refuse_outside_the_allow_list_and_run_injections_as_plain_text(
        fleet: Fleet, kube: Kube, namespace: str, make_agent: Callable[..., AgentProcess], tmp_path: Path) -> None:
    victim, marker = tmp_path / "keep-me", tmp_path / "pwned"
    victim.write_text("precious")
    spec = pack_spec(victim)
    await create_agents(kube, namespace, [AGENT])
    await kube.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementPack",
                       "metadata": {"name": PACK, "namespace": namespace}, "spec": spec})
    # Two servers of the group; the agent's stream is on the first only, so only it may deliver.
    server, other = fleet.start(2)
    # Created while the agent is offline: it waits, Pending, and is delivered when the agent connects.
    await kube.create(agent_task(namespace, "greet", "say", who="world"))

    agent = make_agent(server)
    start_collecting_agent(agent, {"state_directory": str(agent.directory / "collection"),
                                   "tasks": {"allow": [{"command": ECHO}]}})

    greet = await finished(kube, namespace, "greet", server, agent)
    status = greet["status"]
    assert (status["phase"], status["exitCode"], status["output"], status.get("outputTruncated")) == (
        "Succeeded", 0, "hello world\n", False), status
    assert status["startTime"] <= status["completionTime"]
    assert [reason for _, reason, _ in await events_of(kube, namespace, "greet")].count("TaskSucceeded") == 1

    # A pack names rm, but the agent's own allow-list permits only echo: nothing runs, and the run says why.
    await kube.create(agent_task(namespace, "wipe", "wipe"))
    wipe = await finished(kube, namespace, "wipe", server, agent)
    assert wipe["status"]["phase"] == "Failed", wipe["status"]
    assert "allow-list" in wipe["status"]["output"] and RM in wipe["status"]["output"]
    assert "exitCode" not in wipe["status"]
    assert await asyncio.to_thread(file_exists, victim)
    assert ("Warning", "TaskRefused") in [(kind, reason) for kind, reason, _ in
                                          await events_of(kube, namespace, "wipe")]

    # Shell syntax in a parameter is one argument's text: echo prints it, and nothing else runs.
    hostile = f"x; touch {marker} $(touch {marker}) `touch {marker}` && touch {marker}"
    await kube.create(agent_task(namespace, "inject", "say", who=hostile))
    inject = await finished(kube, namespace, "inject", server, agent)
    assert (inject["status"]["phase"], inject["status"]["output"]) == ("Succeeded", f"hello {hostile}\n")
    assert not await asyncio.to_thread(file_exists, marker)

    # Each run went to the agent once, through the server holding its stream.
    sent = [(s.config["kubernetes"]["member"], r) for s in (server, other) for r in s.log_lines()
            if r.get("msg") == "task sent"]
    assert [member for member, _ in sent] == [server.config["kubernetes"]["member"]] * 3, sent


async def test_an_agent_cannot_report_a_run_it_was_not_sent(fleet: Fleet, kube: Kube, namespace: str,
                                                            pki: Pki) -> None:
    """Another agent's stream reports a result for web01's run: refused and logged, the stream goes on, and the
    run stays Pending for web01."""
    await create_agents(kube, namespace, [AGENT, "web02"])
    await kube.create({"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementPack",
                       "metadata": {"name": PACK, "namespace": namespace}, "spec": pack_spec(Path("/nonexistent"))})
    (server,) = fleet.start(1)
    created = await kube.create(agent_task(namespace, "greet", "say", who="world"))
    assert created is not None
    forged_id = f"{namespace}/greet/{created['metadata']['uid']}"
    async with channel(server.agent_port, pki.agent(fqdn("web02"))) as chan:
        stream = AgentStream(chan)
        await stream.hello(fqdn("web02"))
        await stream.send(pb.AgentMessage(task_result=pb.TaskResult(
            task_id=forged_id, status=pb.TaskResult.STATUS_SUCCEEDED, exit_code=0, output=b"forged")))
        await stream.send(pb.AgentMessage(heartbeat=pb.Heartbeat(seq=1)))

        def refused() -> list[dict[str, Any]]:
            return [r for r in server.log_lines() if r.get("msg") == "task result refused"
                    and "UnknownTask" in json.dumps(r)]
        await until(refused, 30, "the forged result refused in the server's log")
        assert forged_id in json.dumps(refused()[0])
        # The stream was not closed for it: the server still answers the same stream.
        await stream.send(pb.AgentMessage(goodbye=pb.Goodbye(reason="test done")))
        assert await stream.receive(within=10) is None
        code, _ = await stream.status()
        assert code.name == "OK"
    body = await kube.get("opsmgr.io/v1alpha1", "AgentTask", namespace, "greet")
    assert body is not None
    assert (body.get("status") or {}).get("phase", "Pending") == "Pending"
    assert "output" not in (body.get("status") or {})
