"""`opsmgr`: one command for every part (operator, server, agent, gateway) and the tools around them.

Subcommands are registered lazily so `opsmgr agent` never imports the server's or operator's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from opsmgr import __version__

# name -> ("module:attribute", one-line help). A later issue adds its command here and in its own package.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("opsmgr.dev.cli:dev", "Development tools: local PostgreSQL, control plane and runtime."),
    "crds": ("opsmgr.api.cli:crds", "Print the CustomResourceDefinitions generated from the models (or --write them)."),
    "certimport": ("opsmgr.pki.cli:certimport", "Import an agent's or gateway's certificate and key (PEM or PKCS#12)."),
    "db": ("opsmgr.db.cli:db", "Schema migrations for the OperationalDB and the DataWarehouse."),
    "operator": ("opsmgr.operator.main:operator", "Run the operator that reconciles opsmgr's custom resources."),
    "alerts": ("opsmgr.db.alerts_cli:alerts", "List alerts and storms; acknowledge, resolve or close them."),
    "server": ("opsmgr.server.cli:server", "Run a management server: agent channel on 5723, ingest, /metrics."),
    "agent": ("opsmgr.agent.cli:agent", "Run an agent: durable queue, stream to its management servers, heartbeats."),
    "enroll": ("opsmgr.agent.enroll:enroll", "Get this agent's first certificate with a join or ServiceAccount token."),
    "token": ("opsmgr.server.enrollment_cli:token", "Create, list or delete join tokens with which VMs enroll."),
    "agents": ("opsmgr.server.enrollment_cli:agents", "Approve or reject agents waiting for approval."),
    "gateway": ("opsmgr.gateway.cli:gateway", "Run a gateway: relay agents outside the trust boundary to servers."),
    "console": ("opsmgr.console.cli:console", "Run the operations console: agents, health, alerts and charts (HTTPS)."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when they run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            if cmd_name == "agent":  # first: the agent needs no OpenSSL of Python's
                importlib.import_module("opsmgr.agent.without_openssl").import_without_openssl()
            module_name, attribute = SUBCOMMANDS[cmd_name][0].split(":")
            command: Any = getattr(importlib.import_module(module_name), attribute)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists the one-liners without importing every subcommand's module.
        rows = [(name, SUBCOMMANDS[name][1]) for name in sorted(SUBCOMMANDS)]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in sorted(self.commands.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="opsmgr", message="%(prog)s %(version)s")
def main() -> None:
    """opsmgr: the Operations Manager model on Kubernetes.

    Management groups, management servers, agents and gateways, reconciled by a kopf operator.
    """
