"""Pages escape everything an agent (and so an attacker) chooses, and the chart data cannot end its script tag."""

from __future__ import annotations

from datetime import UTC, datetime

from opsmgr.console.pages import render
from opsmgr.console.views import AgentFilter, TimeRange, agent_row

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_agent_names_and_event_text_are_escaped() -> None:
    row = agent_row({"metadata": {"name": EVIL}, "spec": {"fqdn": EVIL}}, [])
    html = render("agents.html", user={"username": EVIL}, csrf="c", namespace="n", rows=[row], total=1,
                  filter=AgentFilter(text=EVIL), counts=[])
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
    page = render("agent.html", user={"username": "u"}, csrf="c", namespace="n", row=row, counters=[], counter=None,
                  window=TimeRange.of("6h", None), ranges=[], points=[], series=[[], []], monitors=[],
                  alerts=[], assets=True, request_path="/",
                  events=[{"logged_at": datetime.now(UTC), "level": 2, "source": EVIL, "number": 1,
                           "object_key": EVIL, "description": EVIL}])
    assert "<script>alert" not in page and "<img src=x" not in page


def test_chart_data_cannot_close_its_script_tag() -> None:
    from opsmgr.console.pages import ENVIRONMENT  # noqa: PLC0415

    html = ENVIRONMENT.from_string('<script type="application/json">{{ data|tojson }}</script>').render(
        data=["</script><script>alert(1)</script>"])
    assert html.count("</script>") == 1
