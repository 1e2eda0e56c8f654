"""`opsmgr agent --config FILE`: run the agent's data path until SIGTERM, then say Goodbye."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from opsmgr.agent.config import AgentConfig, AgentConfigError, load_config
from opsmgr.agent.identity import IdentityError
from opsmgr.agent.queue import QueueError
from opsmgr.agent.service import AgentRefused, run_agent
from opsmgr.allocator import one_malloc_arena

EXIT_CONFIG = 2
EXIT_REFUSED = 3


@click.command("agent")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The agent's YAML configuration file.")
def agent(config_path: Path) -> None:
    """Run the agent: durable queue, connection to its management servers, heartbeats, renewal."""
    one_malloc_arena()
    try:
        config = load_config(config_path)
    except AgentConfigError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(EXIT_CONFIG) from None
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config))
    except AgentRefused as exc:
        click.echo(f"opsmgr agent refuses to start: {exc}", err=True)
        raise SystemExit(EXIT_REFUSED) from None
    except (IdentityError, QueueError) as exc:
        click.echo(f"opsmgr agent cannot start: {exc}", err=True)
        raise SystemExit(1) from None


async def _serve(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_agent(config, stop)
