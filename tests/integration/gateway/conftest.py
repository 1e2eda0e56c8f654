"""Real `opsmgr gateway` processes between real `opsmgr agent` processes and real `opsmgr server` processes, all on
127.0.0.1 with real mTLS and two real PostgreSQL servers (the server's and the agent's fixtures, reused)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opsmgr.dev.postgres import free_port
from opsmgr.pki import Role
from tests.integration.agent.datapath.conftest import (  # noqa: F401 - fixtures shared with the agent's tests
    TLS_NAME,
    AgentProcess,
    make_agent,
)
from tests.integration.server.client import Credentials
from tests.integration.server.conftest import (  # noqa: F401 - fixtures shared with the server's tests
    AGENTS,
    GATEWAY,
    GROUP,
    Pki,
    ServerProcess,
    make_server,
    pki,
    warehouse_dsn,
    warehouse_server,
    write_directory,
)

MakeGateway = Callable[..., ServerProcess]
MakeRelayedAgent = Callable[..., AgentProcess]


def relay_through_gateway(*servers: ServerProcess, relayed: tuple[str, ...] = AGENTS) -> None:
    """Assign `relayed` to the gateway in every server's directory (the Agent resources' gateway field)."""
    for server in servers:
        write_directory(Path(server.config["directory"]["file"]), relayed=relayed)


@pytest.fixture
def make_gateway(pki: Pki) -> Iterator[MakeGateway]:  # noqa: F811
    """Builds (not starts) an `opsmgr gateway` relaying to `servers` in order (primary first)."""
    made: list[ServerProcess] = []

    def build(*servers: ServerProcess, upstream: Credentials | None = None, **overrides: Any) -> ServerProcess:
        """`upstream`: another identity to show the servers than the gateway certificate agents are served with."""
        directory = Path(tempfile.mkdtemp(prefix="opsmgr-gateway-"))
        identity = pki.issue(Role.GATEWAY, GATEWAY)
        for stem, credentials in (("tls", identity), ("upstream", upstream)):
            if credentials is not None:
                (directory / f"{stem}.crt").write_bytes(credentials.certificate_pem)
                (directory / f"{stem}.key").write_bytes(credentials.key_pem)
        (directory / "ca.crt").write_bytes(pki.ca.certificate_pem())
        (directory / "revocations.yaml").write_text("revocations: []\n")
        agent_port, metrics_port = free_port(), free_port()
        config: dict[str, Any] = {
            "group": GROUP, "name": GATEWAY,
            "listen": {"address": "127.0.0.1", "port": agent_port},
            "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt", "server_name": TLS_NAME},
            "servers": [f"127.0.0.1:{server.agent_port}" for server in servers],
            "upstream": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0, "failback_seconds": 2.0,
                         "connect_timeout_seconds": 2.0, "goodbye_flush_seconds": 3.0},
            "metrics": {"address": "127.0.0.1", "port": metrics_port},
            "revocations": {"file": str(directory / "revocations.yaml"), "poll_seconds": 0.5},
            "refuse_on_agent_host": False,  # agents, servers and gateways share this machine in tests
        }
        if upstream is not None:
            config["tls"] |= {"upstream_certificate": "upstream.crt", "upstream_key": "upstream.key"}
        for section, values in overrides.items():
            config[section] = {**config[section], **values} if isinstance(values, dict) else values
        gateway = ServerProcess(directory, config, agent_port, metrics_port, role="gateway")
        made.append(gateway)
        return gateway

    yield build
    for gateway in made:
        gateway.stop()
        shutil.rmtree(gateway.directory, ignore_errors=True)


@pytest.fixture
def make_relayed_agent(pki: Pki, make_agent: MakeRelayedAgent) -> MakeRelayedAgent:  # noqa: F811
    """An agent whose only server is `gateway`, with a certificate of its own FQDN."""

    def build(gateway: ServerProcess, fqdn: str = AGENTS[0], **overrides: Any) -> AgentProcess:
        agent = make_agent(gateway, fqdn=fqdn, servers={"failover": [], "tls_server_name": GATEWAY}, **overrides)
        credentials = pki.agent(fqdn)
        identity = agent.directory / "identity"
        (identity / "tls.key").write_bytes(credentials.key_pem)
        (identity / "tls.crt").write_bytes(credentials.certificate_pem)
        return agent

    return build


def wait_for_log(process: ServerProcess, text: str, *, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.log_path.exists() and process.log_path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} x{count} not in the {process.role} log within {timeout} s:\n"
                         f"{process.log_tail(60)}")
