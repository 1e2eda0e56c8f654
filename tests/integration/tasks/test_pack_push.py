"""ManagementPacks pushed by the server, end to end: the session's real API server, real PostgreSQL, a real
`opsmgr server` process with Kubernetes access (the servers' own Role) and two real `opsmgr agent` processes
that read no pack from their files. What is checked is what a user sees: the samples in the operational DB, and
what each running agent says it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from opsmgr.kubeio.kube import Kube, Ref
from tests.integration.agent.datapath.conftest import AgentProcess
from tests.integration.server.conftest import GROUP, Pki, ServerProcess
from tests.integration.watcher.conftest import Fleet, create_agents, fqdn, until

pytestmark = pytest.mark.timeout(300)

PACK = "linux-performance"
MEMORY = {"name": "memory-used", "performance": {"object": "Memory", "counter": "% Used Memory", "intervalSeconds": 10}}
PROCESSOR = {"name": "cpu-busy", "performance": {"object": "Processor", "counter": "% Processor Time",
                                                 "instance": "_Total", "intervalSeconds": 10}}
EMPTY_PLAN = "collection plan: packs {}; running {'performance': 0"


def pack(namespace: str, version: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementPack",
            "metadata": {"name": PACK, "namespace": namespace},
            "spec": {"managementGroupRef": {"name": GROUP}, "version": version,
                     "agentSelector": {"matchLabels": {"role": "web"}}, "rules": rules}}


def start_agent(make_agent: Callable[..., AgentProcess], server: ServerProcess, pki: Pki, name: str) -> AgentProcess:
    """`opsmgr agent` for fqdn(name), with collection on and no pack of its own."""
    agent = make_agent(server, fqdn=fqdn(name))
    credentials = pki.agent(fqdn(name))
    identity = agent.directory / "identity"
    (identity / "tls.key").write_bytes(credentials.key_pem)
    (identity / "tls.crt").write_bytes(credentials.certificate_pem)
    agent.config["collection"] = {"state_directory": str(agent.directory / "collection")}
    agent.start()
    return agent


async def label(kube: Kube, namespace: str, name: str, role: str) -> None:
    await kube.merge_patch(Ref("opsmgr.io/v1alpha1", "Agent", namespace, name),
                           {"metadata": {"labels": {"role": role}}})


async def samples(dsn: str, agent: str, counter: str) -> int:
    """Rows of one counter of one agent in the operational DB, as a performance view would show them."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM performance_samples WHERE agent = $1 AND counter_name = $2", agent, counter))
    finally:
        await conn.close()


async def wait_for_samples(fleet: Fleet, agent: AgentProcess, name: str, counter: str,
                           server: ServerProcess) -> None:
    try:
        await until(lambda: samples(fleet.operational_dsn, fqdn(name), counter), 90,
                    f"{counter} samples of {name}")
    except TimeoutError:
        pytest.fail(f"no {counter} samples of {name}.\nserver:\n{server.log_tail(40)}\nagent:\n{agent.log()[-4000:]}")


async def told(agent: AgentProcess, text: str, count: int = 1) -> None:
    await asyncio.to_thread(agent.wait_for_log, text, count=count, timeout=60)


async def test_a_pack_created_changed_and_deleted_in_the_cluster_reaches_the_agents_it_targets_without_restart(
        fleet: Fleet, kube: Kube, namespace: str, make_agent: Callable[..., AgentProcess], pki: Pki) -> None:
    await create_agents(kube, namespace, ["web01", "web02"])
    await label(kube, namespace, "web01", "web")
    await label(kube, namespace, "web02", "db")
    (server,) = fleet.start(1)
    web = start_agent(make_agent, server, pki, "web01")
    other = start_agent(make_agent, server, pki, "web02")
    # Both connected, and told by their Welcome that no pack targets them (an empty plan, not "nothing said").
    await told(web, EMPTY_PLAN)
    await told(other, EMPTY_PLAN)
    started = {web.process.pid if web.process else None, other.process.pid if other.process else None}

    # Created while both run: the targeted agent collects it; nobody restarted anything.
    await kube.create(pack(namespace, "1.0.0", [MEMORY]))
    await wait_for_samples(fleet, web, "web01", "% Used Memory", server)
    await told(web, "collection plan: packs {'linux-performance': '1.0.0'}")

    # Changed: a rule added, which the running agent applies.
    await kube.merge_patch(Ref("opsmgr.io/v1alpha1", "ManagementPack", namespace, PACK),
                           {"spec": {"version": "1.0.1", "rules": [MEMORY, PROCESSOR]}})
    await wait_for_samples(fleet, web, "web01", "% Processor Time", server)
    await told(web, "collection plan: packs {'linux-performance': '1.0.1'}; running {'performance': 2")

    # The agent the pack does not select got neither version, and collected nothing of it.
    assert "linux-performance" not in other.log(), other.log()[-3000:]
    assert (await samples(fleet.operational_dsn, fqdn("web02"), "% Used Memory"),
            await samples(fleet.operational_dsn, fqdn("web02"), "% Processor Time")) == (0, 0)
    sent = [(r.get("agent"), r.get("packs")) for r in server.log_lines() if r.get("msg") == "management packs sent"]
    assert (fqdn("web02"), [PACK]) not in sent and (fqdn("web01"), [PACK]) in sent, sent

    # Relabelled, the other agent is targeted now, and collects the pack as it is.
    await label(kube, namespace, "web02", "web")
    await wait_for_samples(fleet, other, "web02", "% Processor Time", server)
    await told(other, "collection plan: packs {'linux-performance': '1.0.1'}; running {'performance': 2")

    # Deleted: both agents stop running it.
    await kube.delete("opsmgr.io/v1alpha1", "ManagementPack", namespace, PACK)
    await told(web, EMPTY_PLAN, count=2)
    await told(other, EMPTY_PLAN, count=2)
    assert {web.process.pid if web.process else None, other.process.pid if other.process else None} == started
    assert web.process is not None and web.process.poll() is None
    assert other.process is not None and other.process.poll() is None


async def test_an_invalid_pack_is_withheld_and_reaches_the_agent_once_fixed(
        fleet: Fleet, kube: Kube, namespace: str, make_agent: Callable[..., AgentProcess], pki: Pki) -> None:
    """An override naming a rule the pack lacks: the operator's Ready says so, and no agent runs the pack in part."""
    await create_agents(kube, namespace, ["web01"])
    await label(kube, namespace, "web01", "web")
    broken = pack(namespace, "1.0.0", [MEMORY])
    broken["spec"]["overrides"] = [{"name": "slower", "rule": "memory", "parameter": "IntervalSeconds", "value": "60"}]
    await kube.create(broken)
    (server,) = fleet.start(1)
    web = start_agent(make_agent, server, pki, "web01")
    await told(web, EMPTY_PLAN)

    def withheld() -> list[dict[str, Any]]:
        return [r for r in server.log_lines() if r.get("msg") == "management pack withheld"]
    await until(withheld, 30, "the invalid pack withheld in the server's log")
    assert "'memory' is not in spec.rules" in withheld()[0]["reason"], withheld()

    await kube.merge_patch(Ref("opsmgr.io/v1alpha1", "ManagementPack", namespace, PACK),
                           {"spec": {"overrides": [{"name": "slower", "rule": "memory-used",
                                                    "parameter": "IntervalSeconds", "value": "60"}]}})
    await wait_for_samples(fleet, web, "web01", "% Used Memory", server)
    await told(web, "collection plan: packs {'linux-performance': '1.0.0'}")
