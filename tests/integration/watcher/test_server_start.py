"""A management server that starts while it cannot read the group's Agents yet (the Kubernetes API is slow or out
of reach) must not turn registered agents away as unknown: it opens the agent port only once it knows them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml

from opsmgr.kubeio.kube import Kube
from tests.integration.server.client import AgentStream, Credentials, channel
from tests.integration.watcher.conftest import Fleet, create_agents, fqdn
from tests.reliability.network import CuttableLink

pytestmark = pytest.mark.timeout(180)
CUT_SECONDS = 8.0  # well inside the server's sync timeout (30 s) and longer than its database start


def through(link: CuttableLink, kubeconfig: Path) -> Path:
    """The servers' kubeconfig, with the API server reached through `link`."""
    document = yaml.safe_load(kubeconfig.read_text())
    document["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{link.port}"
    path = kubeconfig.with_name("through-link.kubeconfig")
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


async def dial(port: int, credentials: Credentials, name: str) -> str:
    """One attempt to open a stream: "welcome", or the gRPC status that ended it."""
    try:
        async with channel(port, credentials) as chan:
            await AgentStream(chan).hello(fqdn(name))
            return "welcome"
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"


async def test_a_server_that_cannot_list_agents_yet_keeps_its_port_shut_instead_of_calling_them_unknown(
        fleet: Fleet, kube: Kube, namespace: str, agent_credentials: Callable[[str], Credentials]) -> None:
    await create_agents(kube, namespace, ["web01"])
    api_port = int(str(yaml.safe_load(fleet.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
                   .rsplit(":", 1)[1])
    link = CuttableLink(api_port).start()
    try:
        link.cut()
        server = fleet.build(0)
        server.config["kubernetes"]["kubeconfig"] = str(through(link, fleet.kubeconfig))
        starting = asyncio.create_task(asyncio.to_thread(server.start, 120))
        outcomes: list[str] = []
        deadline = time.monotonic() + CUT_SECONDS
        while time.monotonic() < deadline:
            outcomes.append(await dial(server.agent_port, agent_credentials("web01"), "web01"))
            await asyncio.sleep(0.2)
        assert server.process is not None and server.process.poll() is None, server.log_tail()
        denied = [outcome for outcome in outcomes if outcome.startswith("PERMISSION_DENIED")]
        assert not denied, f"a registered agent was refused while the server could not list Agents: {denied[:3]}"
        assert "welcome" not in outcomes  # nothing vouched for it yet: the directory file is empty

        link.restore()
        async with asyncio.timeout(90):
            await starting
        assert await dial(server.agent_port, agent_credentials("web01"), "web01") == "welcome", server.log_tail()
        assert "UnknownAgent" not in server.log_path.read_text()
    finally:
        link.stop()
