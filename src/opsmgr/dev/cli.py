"""`opsmgr dev`: run the real components locally for development and `make demo`."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path

import click

from opsmgr.dev.postgres import LocalPostgres, PostgresUnavailable


@click.group()
def dev() -> None:
    """Development tools: local PostgreSQL, the Go-built control plane and the local runtime."""


@dev.command("postgres")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory to use (kept); a temporary one is used and removed when omitted.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="TCP port on 127.0.0.1 (default: a free one).")
def postgres(directory: Path | None, port: int | None) -> None:
    """Run a real PostgreSQL server in the foreground until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="opsmgr-pg-") as tmp:
        server = LocalPostgres(directory or Path(tmp), fsync=directory is not None)
        if port is not None:
            server.port = port
        try:
            server.start()
        except PostgresUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"PostgreSQL is running: {server.dsn()}  (log: {server.log_file}); Ctrl-C stops it")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            stop.wait()
        finally:
            server.stop()
