"""Fixtures shared by every tier: real PostgreSQL, and the rule that CI never passes on a skipped real test."""

from __future__ import annotations

import contextlib
import os

# Test processes run gRPC clients and servers while they start PostgreSQL as root, dropped to `postgres`: that
# subprocess needs a real fork() (no vfork with user=), and gRPC's fork handlers, on by default in the wheels, then
# crash the child or corrupt the parent's poller ("epoll_wait error: Bad file descriptor", pg_ctl killed by SIGSEGV).
# gRPC reads this when it is first imported, and the conftests of the folders pytest was given import it before any
# hook runs: so here, at the top of the first conftest.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import LocalPostgres

if TYPE_CHECKING:
    import opsmgr.dev.runtime

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REAL_TIERS = ("integration", "e2e", "reliability", "security")



def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The folder says which tier a test belongs to, so nobody has to remember the marker.
    for item in items:
        parts = Path(str(item.path)).parts
        for tier in REAL_TIERS:
            if tier in parts:
                item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    # In CI a skipped test against a real component hides a missing install step: make it fail loudly.
    # An expected failure (xfail) is reported as skipped too; it is a known issue, not a missing install step.
    expected_failure = hasattr(report, "wasxfail")
    if IN_CI and report.skipped and not expected_failure and item.get_closest_marker("integration") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped integration test fails in CI (CI=true): {reason}"
    # A failure against the control plane names the process logs, so nobody has to hunt for them.
    if report.failed and "kube_cluster" in getattr(item, "fixturenames", ()):
        local = _SESSION_CLUSTER.get("cluster")
        if local is not None:
            logs = "\n".join(f"{name}: {path}" for name, path in local.log_files().items())
            report.sections.append(("control-plane logs", logs))


_FIGURES: list[tuple[str, list[str]]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[Sequence[str]], None]:
    """Figures a test measured (counts per fault, inputs fuzzed): printed in the run's summary, passed or not."""

    def add(lines: Sequence[str]) -> None:
        _FIGURES.append((request.node.nodeid, list(lines)))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("figures")
    for nodeid, lines in _FIGURES:
        terminalreporter.write_line(nodeid)
        for line in lines:
            terminalreporter.write_line(f"  {line}")


@contextlib.contextmanager
def running_postgres(prefix: str = "opsmgr-pg-") -> Iterator[LocalPostgres]:
    """A real PostgreSQL server of its own in a temporary directory, removed afterwards."""
    # Not under pytest's tmp_path: that is private to root, and PostgreSQL runs as its own account when we are root.
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    server = LocalPostgres(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One real PostgreSQL server for the whole session; each test gets its own database from it."""
    with running_postgres() as server:
        yield server


@contextlib.asynccontextmanager
async def scratch_database(server: LocalPostgres, prefix: str = "t") -> AsyncIterator[str]:
    """A fresh, empty database on `server` for one test, dropped afterwards; yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield server.dsn(name)
    finally:
        admin = await asyncpg.connect(server.dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def postgres_dsn(postgres_server: LocalPostgres) -> AsyncIterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    async with scratch_database(postgres_server) as dsn:
        yield dsn


_SESSION_CLUSTER: dict[str, LocalCluster] = {}


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[LocalCluster]:
    """A real etcd + kube-apiserver + kube-controller-manager for the whole session (built on first use)."""
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-kube-"))
    local = LocalCluster(directory)
    local.start()
    _SESSION_CLUSTER["cluster"] = local
    try:
        yield local
    finally:
        _SESSION_CLUSTER.pop("cluster", None)
        local.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def namespace(kube_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace, with its default service account in place so Pods are admitted at once."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    kube_cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while kube_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service account controller made no default account in {name} within 30 s")
        time.sleep(0.2)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def local_runtime_session(kube_cluster: LocalCluster) -> Iterator[opsmgr.dev.runtime.RuntimeThread]:
    """One local runtime (Node `local`) for the session; it serves the namespaces tests hand it."""
    # Imported here so unit-test runs do not pay for kubernetes_asyncio.
    from opsmgr.dev.runtime import RuntimeSettings, RuntimeThread  # noqa: PLC0415
    from opsmgr.dev.runtime_lifecycle import RestartBackoff  # noqa: PLC0415

    # Not under pytest's tmp_path: PostgreSQL, run as its own account, must reach its volume.
    root = Path(tempfile.mkdtemp(prefix="opsmgr-runtime-"))
    root.chmod(0o755)
    # A short crash-loop backoff keeps restart tests quick; everything else is the kubelet's behaviour.
    settings = RuntimeSettings(kubeconfig=kube_cluster.kubeconfig, root=root, namespaces=set(),
                               backoff=RestartBackoff(initial=1.0, cap=10.0))
    runtime = RuntimeThread(settings).start()
    try:
        yield runtime
    finally:
        runtime.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def local_runtime(local_runtime_session: opsmgr.dev.runtime.RuntimeThread,
                  namespace: str) -> opsmgr.dev.runtime.RuntimeThread:
    """The session's local runtime, now running the Pods of this test's `namespace` as local processes."""
    local_runtime_session.serve(namespace)
    return local_runtime_session
