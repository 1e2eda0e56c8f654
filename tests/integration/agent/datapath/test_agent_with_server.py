"""The agent's data path against real management servers and real PostgreSQL: exactly once across kill -9 and
server outages, eviction accounting across kill -9, a fresh alert through a long backlog, failover and failback,
Goodbye on SIGTERM, and the refusal to run beside a management server."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from opsmgr.agent.lanes import ItemKind
from tests.integration.agent.datapath.conftest import AgentProcess, generated, rows_by_kind
from tests.integration.server.conftest import ServerProcess

PRIORITY_ONLY_OPERATIONAL = (ItemKind.ALERT, ItemKind.DISCOVERY)
# Large enough that its replay outlasts the alert's way in under a loaded make test: 200,000 items drained in ~2 s
# once the server's ingest got faster, and one CI-like run saw the alert land only after all of them.
BACKLOG = 400_000


def mixed(start: int, count: int) -> dict[ItemKind, list[Any]]:
    return {kind: generated(kind, count if kind in (ItemKind.EVENT, ItemKind.PERFORMANCE) else count // 10, start)
            for kind in ItemKind}


async def wait_for_rows(dsn: str, expected: dict[ItemKind, int],
                        within: float = 90) -> dict[ItemKind, tuple[int, int]]:
    deadline = time.monotonic() + within
    counts: dict[ItemKind, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        counts = await rows_by_kind(dsn, tuple(expected))
        if all(counts.get(kind, (0, 0))[0] >= n for kind, n in expected.items()):
            return counts
        await asyncio.sleep(0.25)
    return counts


async def test_every_item_arrives_exactly_once_across_a_server_kill_and_an_agent_kill_9(
        make_server: Callable[..., ServerProcess], make_agent: Callable[..., AgentProcess]) -> None:
    server = make_server()
    server.start()
    agent = make_agent(server)
    agent.start()
    agent.wait_for_log("connected to")
    sent: dict[ItemKind, int] = dict.fromkeys(ItemKind, 0)
    for round_, action in enumerate(("server_kill", "agent_kill", "restart")):
        batch = mixed(round_ * 10_000, 3000)
        agent.enqueue([item for items in batch.values() for item in items])
        for kind, items in batch.items():
            sent[kind] += len(items)
        if action == "server_kill":
            await asyncio.sleep(0.3)  # mid-send
            server.kill()
        elif action == "agent_kill":
            agent.kill9()
        else:
            server.start()
            agent.start()
    operational = server.config["databases"]["operational_dsn"]
    warehouse = server.config["databases"]["warehouse_dsn"]
    op_counts = await wait_for_rows(operational, sent)
    assert op_counts == {kind: (n, n) for kind, n in sent.items()}, "operational: rows == distinct keys == generated"
    bulk = {kind: n for kind, n in sent.items() if kind not in PRIORITY_ONLY_OPERATIONAL}
    wh_counts = await wait_for_rows(warehouse, bulk)
    assert wh_counts == {kind: (n, n) for kind, n in bulk.items()}, "warehouse: rows == distinct keys == generated"
    deadline = time.monotonic() + 30
    while agent.queue_status().depth_items:
        assert time.monotonic() < deadline, agent.log()[-2000:]
        await asyncio.sleep(0.2)
    assert agent.queue_status().depth_items == 0, "every batch left the queue once both databases acknowledged it"


async def test_a_full_queue_loses_only_the_oldest_lowest_priority_items_and_counts_them_across_kill_9(
        make_server: Callable[..., ServerProcess], make_agent: Callable[..., AgentProcess]) -> None:
    server = make_server()
    agent = make_agent(server, queue={"limit_bytes": 1024 * 1024})
    agent.start()  # the server is down: everything stays queued
    agent.wait_for_log("could not connect to")
    alerts = generated(ItemKind.ALERT, 300, padding=200)
    events = generated(ItemKind.EVENT, 4000, padding=400)
    agent.enqueue(alerts[:150] + events[:2000])
    agent.kill9()
    agent.enqueue(alerts[150:] + events[2000:])
    status = agent.queue_status()
    evicted = status.evicted_by_kind
    assert evicted[ItemKind.EVENT] > 0 and evicted[ItemKind.ALERT] == 0
    server.start()
    agent.start()
    operational = server.config["databases"]["operational_dsn"]
    expected = {ItemKind.ALERT: 300, ItemKind.EVENT: 4000 - evicted[ItemKind.EVENT]}
    counts = await wait_for_rows(operational, expected)
    assert counts[ItemKind.ALERT] == (300, 300), "no alert is ever evicted for events"
    assert counts[ItemKind.EVENT][0] == 4000 - evicted[ItemKind.EVENT], "what is missing is exactly what was counted"
    keys = [int(k) for k in await _event_numbers(operational)]
    assert min(keys) == evicted[ItemKind.EVENT], "the oldest events went first"


async def _event_numbers(dsn: str) -> list[str]:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT object_key FROM events WHERE object_key LIKE 'gen:event:%'")
        return [str(row["object_key"]).rsplit(":", 1)[1] for row in rows]
    finally:
        await conn.close()


async def test_a_new_alert_overtakes_a_400000_item_backlog_replay(
        make_server: Callable[..., ServerProcess], make_agent: Callable[..., AgentProcess]) -> None:
    server = make_server()
    agent = make_agent(server)
    agent.enqueue(generated(ItemKind.PERFORMANCE, BACKLOG))
    server.start()
    agent.start()
    operational = server.config["databases"]["operational_dsn"]
    deadline = time.monotonic() + 60
    while (await rows_by_kind(operational, (ItemKind.PERFORMANCE,))).get(ItemKind.PERFORMANCE, (0, 0))[0] < 20_000:
        assert time.monotonic() < deadline, "the backlog does not replay"
        await asyncio.sleep(0.1)
    sent_at = time.monotonic()
    agent.enqueue(generated(ItemKind.ALERT, 1, start=7))
    while (await rows_by_kind(operational, (ItemKind.ALERT,))).get(ItemKind.ALERT, (0, 0))[0] < 1:
        assert time.monotonic() - sent_at < 60, "the alert is stuck behind the backlog"
        await asyncio.sleep(0.02)
    # The behaviour that matters: the alert lands while the backlog is still replaying, not after it.
    # (Its latency is a benchmark figure on this shared machine, not an assertion.)
    backlog_replayed = (await rows_by_kind(operational, (ItemKind.PERFORMANCE,)))[ItemKind.PERFORMANCE][0]
    assert backlog_replayed < BACKLOG, f"the alert waited for the whole backlog ({time.monotonic() - sent_at:.1f} s)"


async def test_agent_fails_over_after_three_failed_attempts_and_fails_back_to_the_primary(
        make_server: Callable[..., ServerProcess], make_agent: Callable[..., AgentProcess]) -> None:
    primary, failover = make_server(), make_server()
    failover.start()
    agent = make_agent(primary, (failover,))
    agent.start()  # the primary is down from the start
    agent.wait_for_log(f"connected to 127.0.0.1:{failover.agent_port}", timeout=30)
    log = agent.log()
    assert log.count(f"could not connect to 127.0.0.1:{primary.agent_port}") == 3
    agent.enqueue(generated(ItemKind.ALERT, 5))
    operational = primary.config["databases"]["operational_dsn"]
    assert (await wait_for_rows(operational, {ItemKind.ALERT: 5}))[ItemKind.ALERT] == (5, 5)
    primary.start()
    agent.wait_for_log(f"failing back from 127.0.0.1:{failover.agent_port}", timeout=30)
    agent.wait_for_log(f"connected to 127.0.0.1:{primary.agent_port}", timeout=30)
    assert any(line.get("msg", line.get("message")) == "agent said goodbye" or "goodbye" in str(line)
               for line in failover.log_lines()), "the failover heard a Goodbye, so it raises nothing"
    agent.enqueue(generated(ItemKind.ALERT, 5, start=5))
    assert (await wait_for_rows(operational, {ItemKind.ALERT: 10}))[ItemKind.ALERT] == (10, 10)


async def test_sigterm_sends_goodbye_and_exits_cleanly(make_server: Callable[..., ServerProcess],
                                                       make_agent: Callable[..., AgentProcess]) -> None:
    server = make_server()
    server.start()
    agent = make_agent(server)
    agent.start()
    agent.wait_for_log("connected to")
    assert agent.stop() == 0
    deadline = time.monotonic() + 10
    while not any("goodbye" in str(line) for line in server.log_lines()):
        assert time.monotonic() < deadline, server.log_tail()
        await asyncio.sleep(0.1)


def test_agent_refuses_to_run_beside_a_management_server(make_server: Callable[..., ServerProcess],
                                                         make_agent: Callable[..., AgentProcess]) -> None:
    server = make_server()
    server.start()
    agent = make_agent(server, refuse_on_management_host=True)
    agent.start()
    assert agent.process is not None
    assert agent.process.wait(timeout=30) == 3
    assert "refuses to start" in agent.log() and "management server" in agent.log()
    assert not agent.queue_path.exists(), "nothing is created on a host the agent refuses"


def test_a_renewal_the_server_cannot_sign_is_refused_saying_why_and_the_stream_goes_on(
        make_server: Callable[..., ServerProcess], make_agent: Callable[..., AgentProcess]) -> None:
    server = make_server()  # no Kubernetes access: no CA to sign with
    server.start()
    agent = make_agent(server, certificates={"renew_before_days": 3650})  # due at once
    agent.start()
    agent.wait_for_log("certificate renewal refused by the server (RenewalUnavailable)")
    # The stream that asked goes on: three more heartbeats arrive on it, and the agent never reconnected.
    beats = _heartbeats(server)
    deadline = time.monotonic() + 30
    while _heartbeats(server) < beats + 3:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    assert agent.log().count("connected to") == 1, agent.log()[-3000:]
    assert "lost the stream" not in agent.log()
    refused = [line for line in server.log_lines() if line["msg"] == "certificate renewal refused"]
    assert refused and refused[0]["reason"] == "RenewalUnavailable", server.log_tail()


def _heartbeats(server: ServerProcess) -> int:
    found = re.search(r"^opsmgr_heartbeat_delay_seconds_count (\S+)$", server.metrics(), re.MULTILINE)
    return int(float(found.group(1))) if found else 0
