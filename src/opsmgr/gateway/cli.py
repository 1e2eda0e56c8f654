"""`opsmgr gateway --config FILE`: run a gateway that relays agents to their management servers."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from opsmgr.protocol.tls import restrict_cipher_suites

if TYPE_CHECKING:
    from opsmgr.gateway.app import GatewayProcess

EXIT_CONFIG = 2
EXIT_REFUSED = 3


@click.command("gateway")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="YAML configuration of this gateway.")
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
def gateway(config_path: Path, check: bool) -> None:
    """Run a gateway: agents on 5723 (mTLS), relayed to management servers with the gateway's own certificate."""
    restrict_cipher_suites()  # before anything below first touches grpc
    from opsmgr.gateway import host_role  # noqa: PLC0415
    from opsmgr.gateway.config import GatewayConfigError, load_config  # noqa: PLC0415

    try:
        config = load_config(config_path)
    except GatewayConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    if check:
        click.echo(f"{config_path}: configuration is valid")
        return
    if config.refuse_on_agent_host and (reason := host_role.refusal()) is not None:
        click.echo(f"opsmgr gateway refuses to start: {reason}", err=True)
        sys.exit(EXIT_REFUSED)
    from opsmgr.gateway.app import GatewayProcess  # noqa: PLC0415
    from opsmgr.pki.errors import CertificateError  # noqa: PLC0415

    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.WARNING)
    try:
        process = GatewayProcess(config)
    except (CertificateError, OSError) as exc:
        click.echo(f"{config_path}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    asyncio.run(_until_signalled(process))


async def _until_signalled(process: GatewayProcess) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await process.run(stop)
