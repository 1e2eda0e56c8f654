"""Acceptance of the operations console: headless Chromium (Debian's, driven by Playwright) against `opsmgr console`
on databases that real agents filled through a real management server, and the real API server.

What a person sees: the agent list shows each agent's health; the agent page draws its performance chart; an alert
acknowledged and closed in the browser changes in the database; approving a pending agent puts the person's
decision on the Agent resource. Anonymous requests, forged forms and people without the rights are refused.
Screenshots of the main pages are saved in a folder the run's summary names.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from playwright.async_api import ConsoleMessage, Dialog, Page, async_playwright

from opsmgr.dev.postgres import free_port
from opsmgr.kubeio.kube import Kube, Ref
from tests.integration.console.conftest import (  # noqa: F401  (fixtures)
    chromium_path,
    console_access,
    open_port,
    packs,
    screenshots,
    start_agent,
    start_console,
    token,
)
from tests.integration.server.conftest import pki, warehouse_dsn, warehouse_server  # noqa: F401  (fixtures)
from tests.integration.watcher.conftest import Fleet, create_agents, fleet, fqdn, kube  # noqa: F401  (fixtures)

AGENTS_API = "opsmgr.io/v1alpha1"
EVIL = "<img src=x onerror=alert(1)> ERROR disk on fire"


async def until(what: str, check: Callable[[], Awaitable[Any]], *, explain: Callable[[], str],
                within: float = 90) -> Any:
    """Wait for data the agents are still sending (set-up, not an assertion about time)."""
    deadline = time.monotonic() + within
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: still {value!r} after {within} s\n{explain()}")


def _append(path: Path, *lines: str) -> None:
    with path.open("a") as out:
        out.writelines(f"{line}\n" for line in lines)


def health_cells(rows: list[dict[str, str]]) -> dict[str, str]:
    return {row["agent"]: row["health"] for row in rows}


async def agent_table(page: Page) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = await page.eval_on_selector_all(
        "table.agents tbody tr[data-agent]",
        """rows => rows.map(r => ({agent: r.dataset.agent, health: r.cells[1].innerText.trim(),
                                   heartbeat: r.cells[2].innerText.trim(), connection: r.cells[3].innerText.trim(),
                                   server: r.cells[5].innerText.trim(), approval: r.cells[8].innerText.trim()}))""")
    return rows


async def test_a_person_watches_health_reads_a_chart_acknowledges_an_alert_and_approves_an_agent(  # noqa: PLR0917
        fleet: Fleet, console_access: Fleet, kube: Kube, start_console: Any, start_agent: Any,  # noqa: F811
        open_port: int, screenshots: Path, tmp_path: Path, figures: Any) -> None:  # noqa: F811
    namespace = fleet.namespace
    figures([f"screenshots: {screenshots}"])
    print(f"\nconsole screenshots: {screenshots}")
    # web01 watches a closed port (Critical, with an alert), web02 an open one (Healthy); vm07 and vm08 wait for a
    # person's approval.
    await create_agents(kube, namespace, ["web01", "web02"])
    for name in ("vm07", "vm08"):
        await kube.create({"apiVersion": AGENTS_API, "kind": "Agent",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": {"managementGroupRef": {"name": "contoso"}, "fqdn": fqdn(name),
                                    "placement": "Host"}})
    closed_port = free_port()  # nothing listens there
    log_file = tmp_path / "app.log"
    await asyncio.to_thread(log_file.write_text, "")
    critical_packs, healthy_packs = packs(log_file, closed_port), packs(tmp_path / "none.log", open_port)
    # The servers push each agent the packs that select it, in place of any pack file: web01 gets the closed port,
    # web02 the open one.
    for name, pack_list, tier in (("linux-basics", critical_packs, "a"), ("linux-basics-b", healthy_packs, "b")):
        spec = {**pack_list[0]["spec"], "agentSelector": {"matchLabels": {"tier": tier}}}
        await kube.create({**pack_list[0], "metadata": {"name": name, "namespace": namespace}, "spec": spec})
    for name, tier in (("web01", "a"), ("web02", "b")):
        await kube.merge_patch(Ref(AGENTS_API, "Agent", namespace, name), {"metadata": {"labels": {"tier": tier}}})

    (server,) = fleet.start(1)
    web01 = start_agent(fqdn("web01"), server, critical_packs)
    web02 = start_agent(fqdn("web02"), server, healthy_packs)
    conn = await asyncpg.connect(fleet.operational_dsn)
    try:
        async def connected(name: str) -> bool:
            body = await kube.get(AGENTS_API, "Agent", namespace, name)
            status = (body or {}).get("status") or {}
            return bool(status.get("connection") == "Connected" and status.get("heartbeat") == "OK")

        async def value(sql: str, *args: Any) -> Any:
            return await conn.fetchval(sql, *args)

        def logs() -> str:
            return f"web01:\n{web01.log()}\nweb02:\n{web02.log()}\nserver:\n{server.log_tail()}"

        for name in ("web01", "web02"):
            await until(f"{name} connected and heartbeating", functools.partial(connected, name), explain=logs)
        await until("both monitors reported", lambda: value(
            "SELECT count(DISTINCT agent) = 2 FROM state_changes WHERE monitor = 'db-port'"), explain=logs)
        alert_id = await until("web01's alert raised", lambda: value(
            "SELECT alert_id FROM alerts WHERE agent = $1 AND source = 'db-port'", fqdn("web01")), explain=logs)
        await asyncio.to_thread(_append, log_file, "INFO fine", EVIL)
        await until("the log event arrived", lambda: value(
            "SELECT count(*) > 0 FROM events WHERE agent = $1 AND source = 'app-errors'", fqdn("web01")),
            explain=logs)
        await until("two memory samples", lambda: value(
            "SELECT count(*) >= 2 FROM performance_samples WHERE agent = $1 AND counter_name = '% Used Memory'",
            fqdn("web01")), explain=logs)

        console = start_console()
        alice = token(fleet.cluster, namespace, "alice")
        bob = token(fleet.cluster, namespace, "bob")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            try:
                context = await browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
                page = await context.new_page()
                dialogs: list[str] = []
                console_errors: list[str] = []

                async def on_dialog(dialog: Dialog) -> None:  # an escaped payload never opens one
                    dialogs.append(dialog.message)
                    await dialog.dismiss()

                def on_console(message: ConsoleMessage) -> None:
                    if message.type == "error":
                        console_errors.append(message.text)

                page.on("dialog", on_dialog)
                page.on("console", on_console)

                # Anonymous: 401 and the sign-in form.
                response = await page.goto(f"{console.url}/agents")
                assert response is not None and response.status == 401
                assert await page.locator("h1").inner_text() == "Sign in"
                await page.screenshot(path=str(screenshots / "01-sign-in.png"), full_page=True)
                await page.fill("#token", alice)
                await page.click("form.login button[type=submit]")
                await page.wait_for_selector("table.agents")
                assert await page.locator("header .user").inner_text() == "system:serviceaccount:" + namespace + \
                    ":alice"

                # The agent list: health as the monitors say, heartbeat and connection as the server wrote them.
                rows = {row["agent"]: row for row in await agent_table(page)}
                assert health_cells(list(rows.values())) == {"web01": "Critical", "web02": "Healthy",
                                                             "vm07": "Unknown", "vm08": "Unknown"}
                assert (rows["web01"]["connection"], rows["web01"]["heartbeat"]) == ("Connected", "OK")
                assert rows["web01"]["server"] == server.config["kubernetes"]["member"]
                assert (rows["vm07"]["approval"], rows["vm07"]["connection"]) == ("Pending", "NeverConnected")
                assert await page.get_attribute("meta[http-equiv=refresh]", "content") == "3600"  # reloads itself
                await page.screenshot(path=str(screenshots / "02-agents.png"), full_page=True)
                await page.select_option("select[name=health]", "Critical")
                await page.click("form.filters button[type=submit]")
                await page.wait_for_url(re.compile(r"health=Critical"))
                assert [row["agent"] for row in await agent_table(page)] == ["web01"]

                # The agent page: monitors, the event text exactly as written (escaped, never run), the chart.
                await page.click("table.agents a[href='/agents/web01']")
                await page.wait_for_selector("#chart[data-rendered-points]")
                monitor = page.locator("table.monitors tbody tr", has_text="db-port")
                assert await monitor.locator("td.health").inner_text() == "Critical"
                assert await page.locator("table.events td.text", has_text="disk on fire").first.inner_text() == EVIL
                assert dialogs == []
                # Select the memory counter, 24 hours, raw.
                memory = await page.locator("select[name=counter] option", has_text="% Used Memory").get_attribute(
                    "value")
                assert memory is not None
                await page.select_option("select[name=counter]", memory)
                await page.select_option("select[name=range]", "24h")
                await page.select_option("select[name=resolution]", "raw")
                await page.click("#range-picker button[type=submit]")
                await page.wait_for_url(re.compile(r"range=24h"))
                await page.wait_for_selector("#chart[data-rendered-points]")
                points = int(await page.get_attribute("#chart", "data-rendered-points") or 0)
                assert points >= 2
                assert "% Used Memory" in await page.locator(".chart-caption").inner_text()
                drawn = await page.evaluate(_SERIES_PIXELS)
                assert drawn > 0, "the chart's canvas holds no pixel of the series' colour"
                await page.screenshot(path=str(screenshots / "03-agent-web01.png"), full_page=True)
                # The hourly view of the same range asks the warehouse (its aggregates may not exist yet).
                await page.select_option("select[name=resolution]", "hourly")
                await page.click("#range-picker button[type=submit]")
                await page.wait_for_url(re.compile(r"resolution=hourly"))
                assert "hourly" in await page.locator(".chart-caption").inner_text()

                # Alerts: acknowledge, then close; each is in the database at once.
                await page.goto(f"{console.url}/alerts")
                row = page.locator(f"tr[data-alert='{alert_id}']")
                assert await row.locator("td.state").inner_text() == "New"
                await page.screenshot(path=str(screenshots / "04-alerts.png"), full_page=True)
                await row.locator("button", has_text="Acknowledge").click()
                await page.wait_for_load_state()
                assert await page.locator(f"tr[data-alert='{alert_id}'] td.state").inner_text() == "Acknowledged"
                assert await conn.fetchval("SELECT resolution_state FROM alerts WHERE alert_id = $1", alert_id) == 249

                # Pending agents: alice approves vm07; the Agent carries her decision for the operator.
                await page.goto(f"{console.url}/pending")
                assert await page.locator("table.pending tr[data-agent]").evaluate_all(
                    "rows => rows.map(r => r.dataset.agent)") == ["vm07", "vm08"]
                await page.screenshot(path=str(screenshots / "05-pending.png"), full_page=True)
                await page.locator("tr[data-agent='vm07'] button", has_text="Approve").click()
                await page.wait_for_selector("p.message")
                vm07 = await kube.get(AGENTS_API, "Agent", namespace, "vm07")
                assert vm07 is not None
                assert vm07["metadata"]["annotations"]["opsmgr.io/approval"] == "Approved"
                assert "Approved" in await page.locator("tr[data-agent='vm07']").inner_text()

                # Management packs and their rules.
                await page.goto(f"{console.url}/packs")
                await page.click("a[href='/packs/linux-basics']")
                rules = await page.locator("table.rules tbody tr td:first-child").all_inner_texts()
                assert rules == ["memory-used", "app-errors"]
                await page.screenshot(path=str(screenshots / "06-pack.png"), full_page=True)

                # Close the alert from the agent page's own table; it leaves the active list.
                await page.goto(f"{console.url}/agents/web01")
                await page.locator(f"tr[data-alert='{alert_id}'] button", has_text="Close").click()
                await page.wait_for_load_state()
                assert await conn.fetchval("SELECT resolution_state FROM alerts WHERE alert_id = $1", alert_id) == 255
                await page.goto(f"{console.url}/alerts")
                assert await page.locator(f"tr[data-alert='{alert_id}']").count() == 0
                assert [e for e in console_errors if "Content Security Policy" in e] == []

                await _refusals(playwright, console.url, alice, bob, str(alert_id), kube, namespace, conn)
            finally:
                await browser.close()
        taken = await asyncio.to_thread(lambda: sorted(p.name for p in screenshots.glob("*.png")))
        figures([f"screenshots taken: {', '.join(taken)}"])
    finally:
        await conn.close()


async def _refusals(playwright: Any, url: str, alice: str, bob: str, alert_id: str,  # noqa: PLR0917
                    kube: Kube, namespace: str, conn: asyncpg.Connection) -> None:  # noqa: F811
    """No anonymous writes, no forged forms, and RBAC decides what a signed-in person may change."""
    anonymous = await playwright.request.new_context(base_url=url, ignore_https_errors=True)
    try:
        refused = await anonymous.post("/agents/vm08/approve", form={"csrf": "x"})
        assert refused.status == 401
        forged = await anonymous.post(f"/alerts/{alert_id}/acknowledge", form={"csrf": "x"},
                                      headers={"Authorization": f"Bearer {alice}"})
        assert forged.status == 403 and "CSRF" in await forged.text()
        page = await anonymous.get("/pending", headers={"Authorization": f"Bearer {bob}"})
        assert page.status == 200
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.text())
        assert match is not None
        denied = await anonymous.post("/agents/vm08/approve", form={"csrf": match.group(1)},
                                      headers={"Authorization": f"Bearer {bob}"})
        assert denied.status == 403 and "Kubernetes refused" in await denied.text()
        vm08 = await kube.get(AGENTS_API, "Agent", namespace, "vm08")
        assert vm08 is not None and "opsmgr.io/approval" not in (vm08["metadata"].get("annotations") or {})
        new_alert = await conn.fetchval("SELECT alert_id::text FROM alerts ORDER BY raised_at DESC LIMIT 1")
        before = await conn.fetchval("SELECT resolution_state FROM alerts WHERE alert_id = $1::uuid", new_alert)
        denied = await anonymous.post(f"/alerts/{new_alert}/close", form={"csrf": match.group(1)},
                                      headers={"Authorization": f"Bearer {bob}"})
        assert denied.status == 403
        assert await conn.fetchval("SELECT resolution_state FROM alerts WHERE alert_id = $1::uuid", new_alert) == before
        wrong = await anonymous.get("/agents", headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status == 401
    finally:
        await anonymous.dispose()


# Pixels of the series' stroke colour (rgb(31, 119, 180)) on the chart's canvas.
_SERIES_PIXELS = """() => {
  const canvas = document.querySelector('#chart canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - 31) < 12 && Math.abs(data[i + 1] - 119) < 12 && Math.abs(data[i + 2] - 180) < 12
        && data[i + 3] > 0) { count++; }
  }
  return count;
}"""
