"""`opsmgr agent --config FILE`: run the agent's data path until SIGTERM, then say Goodbye."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
from pathlib import Path

import click

from opsmgr.agent.config import AgentConfig, AgentConfigError, load_config
from opsmgr.agent.identity import IdentityError
from opsmgr.agent.queue import QueueError
from opsmgr.agent.service import AgentRefused, run_agent

EXIT_CONFIG = 2
EXIT_REFUSED = 3
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def one_malloc_arena() -> None:
    """Let every thread of this process share one glibc malloc arena; call it before any thread starts.

    glibc gives each thread that allocates an arena of its own (up to 8 per core), and each arena keeps the memory
    freed into it. The agent's few threads (gRPC's, the queue's SQLite thread, discovery and counter workers)
    allocate little and seldom at the same time, so sharing one costs no measurable CPU, while the arenas they
    each keep cost the agent 1.6 to 4 MB of RSS in bench_agent_collection (issue 9's budget is 50 MB).
    Does nothing where the C library has no mallopt (e.g. musl).
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, 1)


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
