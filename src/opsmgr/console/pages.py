"""Rendering the console's pages: Jinja2 templates with autoescaping on for every template, so agent names, event
text and alert descriptions (which agents, and so possibly attackers, choose) are always escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from opsmgr.console.views import event_level_label, priority_label, resolution_state_label, severity_label


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("opsmgr.console", "templates"),
                              autoescape=select_autoescape(default=True, default_for_string=True),
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(when=_when, severity=severity_label, priority=priority_label,
                               resolution_state=resolution_state_label, event_level=event_level_label)
    return environment


ENVIRONMENT = _environment()


def render(template: str, **context: Any) -> str:
    return ENVIRONMENT.get_template(template).render(**context)
