"""`opsmgr server --config FILE`: run a management server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from opsmgr.allocator import map_large_blocks
from opsmgr.server.tls import restrict_cipher_suites

if TYPE_CHECKING:
    from opsmgr.server.app import ManagementServer


@click.command("server")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="YAML configuration of this management server.")
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
def server(config_path: Path, check: bool) -> None:
    """Run a management server: agent channel on 5723, ingest into both databases, /metrics and /healthz."""
    restrict_cipher_suites()  # before anything below first touches grpc
    from opsmgr.server.config import ConfigError, load_config  # noqa: PLC0415
    from opsmgr.server.directory import DirectoryFileError  # noqa: PLC0415

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if check:
        click.echo(f"{config_path}: configuration is valid")
        return
    map_large_blocks()  # before grpc and the event loop allocate what lasts (see allocator)
    import yaml  # noqa: PLC0415

    from opsmgr.pki.errors import CertificateError  # noqa: PLC0415
    from opsmgr.server.app import ManagementServer  # noqa: PLC0415
    from opsmgr.server.logs import configure_logging  # noqa: PLC0415

    configure_logging(config.log.format, config.log.level)
    try:
        management_server = ManagementServer(config)
    except (DirectoryFileError, CertificateError, OSError, yaml.YAMLError) as exc:
        click.echo(f"{config_path}: {exc}", err=True)
        sys.exit(2)
    asyncio.run(_serve(management_server))


async def _serve(management_server: ManagementServer) -> None:
    from opsmgr.server.heap import HeapFreezer  # noqa: PLC0415

    # Only the server process freezes its heap: tests that run a ManagementServer in-process keep their collector.
    freezer = asyncio.create_task(HeapFreezer().run(), name="heap-freezer")
    try:
        await management_server.serve_until_signalled()
    finally:
        freezer.cancel()
        await asyncio.gather(freezer, return_exceptions=True)
