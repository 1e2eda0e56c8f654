"""Agents through a real gateway to real management servers and PostgreSQL: every item exactly once, across ten
SIGKILLs of the gateway, and the gateway's failover and failback between two servers."""

from __future__ import annotations

import asyncio
import time

from opsmgr.agent.lanes import ItemKind
from tests.integration.agent.datapath.conftest import AgentProcess, generated, rows_by_kind
from tests.integration.agent.datapath.test_agent_with_server import wait_for_rows
from tests.integration.gateway.conftest import (
    MakeGateway,
    MakeRelayedAgent,
    relay_through_gateway,
    wait_for_log,
)
from tests.integration.server.conftest import AGENTS, MakeServer, ServerProcess

BULK = (ItemKind.EVENT, ItemKind.PERFORMANCE, ItemKind.STATE)  # the kinds both databases receive


def enqueue_mixed(agent: AgentProcess, start: int, count: int, sent: dict[ItemKind, int]) -> None:
    """`count` events and performance samples and a tenth as many of each priority kind, keys from `start`."""
    items = []
    for kind in ItemKind:
        batch = generated(kind, count if kind in (ItemKind.EVENT, ItemKind.PERFORMANCE) else count // 10, start)
        items += batch
        sent[kind] = sent.get(kind, 0) + len(batch)
    agent.enqueue(items)


async def assert_exactly_once(dsns: tuple[str, str], sent: dict[ItemKind, int], agents: list[AgentProcess]) -> None:
    operational, warehouse = dsns
    assert await wait_for_rows(operational, sent) == {kind: (n, n) for kind, n in sent.items()}, \
        "operational: rows == distinct keys == generated"
    bulk = {kind: n for kind, n in sent.items() if kind in BULK}
    assert await wait_for_rows(warehouse, bulk) == {kind: (n, n) for kind, n in bulk.items()}, \
        "warehouse: rows == distinct keys == generated"
    deadline = time.monotonic() + 30
    for agent in agents:
        while agent.queue_status().depth_items:
            assert time.monotonic() < deadline, agent.log()[-3000:]
            await asyncio.sleep(0.2)


def server_behind_gateway(make_server: MakeServer, make_gateway: MakeGateway) -> tuple[ServerProcess, ServerProcess]:
    server = make_server()
    relay_through_gateway(server)
    server.start()
    gateway = make_gateway(server)
    gateway.start()
    return server, gateway


async def test_agents_through_a_gateway_deliver_every_item_exactly_once(
        make_server: MakeServer, make_gateway: MakeGateway, make_relayed_agent: MakeRelayedAgent) -> None:
    server, gateway = server_behind_gateway(make_server, make_gateway)
    agents = [make_relayed_agent(gateway, fqdn) for fqdn in AGENTS[:3]]
    sent: dict[ItemKind, int] = {}
    for number, agent in enumerate(agents):
        enqueue_mixed(agent, number * 100_000, 2000, sent)
        agent.start()
    for agent in agents:
        agent.wait_for_log("connected to")
    dsns = (server.config["databases"]["operational_dsn"], server.config["databases"]["warehouse_dsn"])
    await assert_exactly_once(dsns, sent, agents)
    health = gateway.healthz()
    assert health is not None and health["status"] == "ok" and health["relayed_agents"] == 3
    assert 'opsmgr_gateway_relayed_agents 3.0' in gateway.metrics()
    presence = [line for line in server.log_lines() if line.get("msg") == "agent connected"]
    assert {line["agent"] for line in presence} == set(AGENTS[:3]), "the server sees each agent's own identity"
    assert {line["identity"] for line in presence} == {"gw01.dmz.contoso.test"}, "...spoken for by the gateway"


async def test_ten_sigkills_of_the_gateway_mid_stream_lose_nothing(
        make_server: MakeServer, make_gateway: MakeGateway, make_relayed_agent: MakeRelayedAgent) -> None:
    server, gateway = server_behind_gateway(make_server, make_gateway)
    agents = [make_relayed_agent(gateway, fqdn) for fqdn in AGENTS[:2]]
    for agent in agents:
        agent.start()
        agent.wait_for_log("connected to")
    sent: dict[ItemKind, int] = {}
    operational = server.config["databases"]["operational_dsn"]
    for round_ in range(10):
        for number, agent in enumerate(agents):
            enqueue_mixed(agent, number * 1_000_000 + round_ * 10_000, 1500, sent)
        before = sum(n for n, _ in (await rows_by_kind(operational)).values())
        deadline = time.monotonic() + 30
        while sum(n for n, _ in (await rows_by_kind(operational)).values()) == before:
            assert time.monotonic() < deadline, gateway.log_tail()
            await asyncio.sleep(0.02)
        gateway.kill()  # mid-stream: rows are arriving, more are in flight and queued
        gateway.start()
    dsns = (operational, server.config["databases"]["warehouse_dsn"])
    await assert_exactly_once(dsns, sent, agents)
    assert gateway.starts == 11


async def test_the_gateway_fails_over_after_three_primary_failures_and_fails_back(
        make_server: MakeServer, make_gateway: MakeGateway, make_relayed_agent: MakeRelayedAgent) -> None:
    primary, failover = make_server(), make_server()
    relay_through_gateway(primary, failover)
    failover.start()
    gateway = make_gateway(primary, failover)
    gateway.start()  # the primary is down from the start
    first, second = f"127.0.0.1:{primary.agent_port}", f"127.0.0.1:{failover.agent_port}"
    wait_for_log(gateway, f"connected to management server {second} (failover)")
    assert gateway.log_path.read_text().count(f"could not connect to management server {first}") == 3
    agent = make_relayed_agent(gateway)
    agent.start()
    agent.wait_for_log("connected to")
    agent.enqueue(generated(ItemKind.ALERT, 5))
    operational = primary.config["databases"]["operational_dsn"]
    assert (await wait_for_rows(operational, {ItemKind.ALERT: 5}))[ItemKind.ALERT] == (5, 5)
    assert any(line.get("msg") == "agent connected" for line in failover.log_lines())
    primary.start()
    wait_for_log(gateway, f"failing back from {second}")
    wait_for_log(gateway, f"connected to management server {first}")
    agent.wait_for_log("connected to", count=2)
    deadline = time.monotonic() + 30
    while not any(line.get("msg") == "agent connected" for line in primary.log_lines()):
        assert time.monotonic() < deadline, primary.log_tail()
        await asyncio.sleep(0.1)
    assert any(line.get("msg") == "agent said goodbye" for line in failover.log_lines()), \
        "the gateway left the failover with a Goodbye, so it raises no heartbeat failure"
    agent.enqueue(generated(ItemKind.ALERT, 5, start=5))
    assert (await wait_for_rows(operational, {ItemKind.ALERT: 10}))[ItemKind.ALERT] == (10, 10)
