"""`opsmgr console --config FILE`: run the operations console (HTTPS)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click


@click.command("console")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="YAML configuration of the console.")
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
def console(config_path: Path, check: bool) -> None:
    """Run the operations console: agents, health, alerts and performance over HTTPS."""
    from opsmgr.console.config import ConfigError, load_config  # noqa: PLC0415

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if check:
        click.echo(f"{config_path}: configuration is valid")
        return
    import ssl  # noqa: PLC0415

    from opsmgr.console.app import serve  # noqa: PLC0415

    logging.basicConfig(level=config.log.level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(config))
    except (OSError, ssl.SSLError) as exc:
        click.echo(f"{config_path}: {exc}", err=True)
        sys.exit(2)
