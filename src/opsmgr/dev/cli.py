"""`opsmgr dev`: run the real components locally for development and `make demo`."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import click

from opsmgr.dev.cluster import ClusterError, LocalCluster, running_state, stop_detached
from opsmgr.dev.demo import AGENTS_TIMEOUT_SECONDS, running_demo
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


DEFAULT_CLUSTER_DIR = Path.home() / ".cache" / "opsmgr" / "dev-cluster"
cluster_dir_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CLUSTER_DIR,
    show_default=True, help="Where the control plane keeps its data, certificates, logs and kubeconfig.")


@dev.group()
def cluster() -> None:
    """A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback."""


@cluster.command("up")
@cluster_dir_option
def cluster_up(directory: Path) -> None:
    """Start the control plane in the background; `opsmgr dev cluster env` tells how to reach it."""
    if running_state(directory) is not None:
        raise click.ClickException(f"a control plane is already running from {directory}; "
                                   "`opsmgr dev cluster down` stops it")
    if directory.exists():
        shutil.rmtree(directory)  # a stale, stopped cluster: its etcd data and certificates are not reused
    try:
        local = LocalCluster(directory, detached=True)
        local.start()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from exc
    local.save_state()
    click.echo(f"control plane up in {local.startup_seconds:.1f} s at {local.server}; logs in {directory}\n"
               f'reach it with: eval "$(opsmgr dev cluster env)"')


@cluster.command("down")
@cluster_dir_option
def cluster_down(directory: Path) -> None:
    """Stop the control plane started by `opsmgr dev cluster up`."""
    stopped = stop_detached(directory)
    click.echo(f"stopped {', '.join(stopped)}" if stopped else f"no control plane was running from {directory}")


@cluster.command("env")
@cluster_dir_option
def cluster_env(directory: Path) -> None:
    """Print shell exports (KUBECONFIG, PATH with kubectl and helm) for the running control plane."""
    state = running_state(directory)
    if state is None:
        raise click.ClickException(f"no control plane is running from {directory}; start one with "
                                   "`opsmgr dev cluster up`")
    click.echo(f"export KUBECONFIG={state['kubeconfig']}\nexport PATH={state['bin_dir']}:$PATH")


@dev.command("demo")
@click.option("--exit-when-ready", is_flag=True,
              help="Stop and remove everything once the agents are Healthy and the summary is printed (for scripts).")
@click.option("--timeout", type=click.IntRange(30, 3600), default=int(AGENTS_TIMEOUT_SECONDS), show_default=True,
              help="Seconds to wait for the agents to become Healthy with fresh heartbeats.")
def demo(exit_when_ready: bool, timeout: int) -> None:
    """Run the whole system locally on its embedded default (what `make demo` runs); Ctrl-C stops everything."""
    root = Path(tempfile.mkdtemp(prefix="opsmgr-demo-"))
    ready = False

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # a `kill` stops the demo as cleanly as Ctrl-C
    try:
        with running_demo(root, progress=click.echo) as local:
            local.start(timeout)
            ready = True
            click.echo(local.summary())
            if not exit_when_ready:
                click.echo("Ctrl-C stops everything.")
                while True:
                    signal.pause()
    except KeyboardInterrupt:
        if not ready:
            click.echo("stopped before the agents were ready; nothing is left running")
            raise SystemExit(130) from None
    except (ClusterError, PostgresUnavailable, RuntimeError, TimeoutError, OSError, ValueError) as exc:
        raise click.ClickException(f"{exc}\nlogs kept in {root} (remove it with `rm -rf {root}`)") from exc
    click.echo("stopped; nothing is left running")


@dev.command("runtime")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Kubeconfig of the cluster (e.g. from `opsmgr dev cluster env`); needs cluster-admin.")
@click.option("--namespace", "-n", "namespaces", multiple=True,
              help="Run the Pods of this namespace (repeatable).")
@click.option("--all-namespaces", "-A", is_flag=True, help="Run the Pods of every namespace.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/opsmgr/dev-runtime"), show_default=True,
              help="Where Pod directories (volumes, logs) and claimed volumes live.")
@click.option("--hosts-file", type=click.Path(dir_okay=False, path_type=Path), default=Path("/etc/hosts"),
              show_default=True, help="Hosts file that gets the Service and Pod names (a managed block).")
@click.option("--node-name", default="local", show_default=True, help="Name of the Node this runtime registers.")
@click.option("--verbose", "-v", is_flag=True, help="Log each process start and exit.")
def runtime(*, kubeconfig: Path, namespaces: tuple[str, ...], all_namespaces: bool, root: Path, hosts_file: Path,
            node_name: str, verbose: bool) -> None:
    """Play the kubelet: register Node `local` and run the Pods of the namespaces as local processes."""
    # Imported here: kubernetes_asyncio is slow to import and only this command needs it.
    from opsmgr.dev.runtime import LocalRuntime, RuntimeSettings  # noqa: PLC0415

    if not namespaces and not all_namespaces:
        raise click.UsageError("name the namespaces whose Pods to run with --namespace NS (repeatable), "
                               "or pass --all-namespaces")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    local = LocalRuntime(RuntimeSettings(kubeconfig=kubeconfig, root=root, hosts_file=hosts_file, node_name=node_name,
                                         namespaces=None if all_namespaces else set(namespaces)))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, local.request_stop)
        runner = asyncio.create_task(local.run())
        await loop.run_in_executor(None, local.ready.wait)  # set when start-up is over, failed or not
        if local.serving:
            click.echo(f"local runtime serving node `{node_name}`, pod addresses {local.claim.network}, "
                       f"Pod directories in {root}; Ctrl-C stops it and every process it started")
        await runner

    try:
        asyncio.run(serve())
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
