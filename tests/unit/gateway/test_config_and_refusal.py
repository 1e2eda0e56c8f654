"""The gateway's configuration file, as the operator renders it and as a person gets it wrong, and its refusal to
share a host with an agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from opsmgr.api import Gateway, ManagementGroup
from opsmgr.cli import main
from opsmgr.gateway.config import GATEWAY_METRICS_PORT, GatewayConfigError, load_config, parse_config
from opsmgr.gateway.host_role import REFUSED_ROLES
from opsmgr.operator import render
from opsmgr.protocol.host_roles import find_role_processes
from tests.unit.operator.test_render import example


def tls_files(folder: Path) -> None:
    (folder / "tls").mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (folder / "tls" / name).write_text("PEM")


def minimal(**more: Any) -> dict[str, Any]:
    return {"group": "contoso", "name": "gw01.dmz.contoso.test", "servers": ["ms-0.ms.opsmgr.svc"],
            "tls": {"certificate": "tls/tls.crt", "key": "tls/tls.key", "ca_bundle": "tls/ca.crt"}, **more}


def test_the_config_the_operator_renders_is_the_config_the_gateway_runs(tmp_path: Path) -> None:
    tls_files(tmp_path)
    group = ManagementGroup.from_body(example("management-group.yaml"))
    gateway = Gateway.from_body(example("gateway.yaml"))
    rendered = render.gateway_config(gateway, group, "production-server-0", ["production-server-1"])
    config = parse_config(rendered, tmp_path / "gateway.yaml")
    assert config.servers == ["production-server-0.ops.svc:5723", "production-server-1.ops.svc:5723"]
    assert config.tls.certificate == tmp_path / "tls" / "tls.crt", "paths are relative to the mounted Secret"
    assert config.name == gateway.spec.fqdn.lower() and config.listen.port == gateway.spec.port


def test_defaults_follow_operations_manager(tmp_path: Path) -> None:
    tls_files(tmp_path)
    config = parse_config(minimal(), tmp_path / "gateway.yaml")
    assert config.servers == ["ms-0.ms.opsmgr.svc:5723"]
    assert (config.upstream.primary_attempts, config.upstream.failback_seconds) == (3, 60.0)
    assert config.heartbeat_seconds == 60 and config.metrics.port == GATEWAY_METRICS_PORT
    assert config.refuse_on_agent_host
    assert config.tls.upstream_identity() == (config.tls.certificate, config.tls.key)


@pytest.mark.parametrize(("change", "expected"), [
    ({"servers": []}, "servers = []: List should have at least 1 item"),
    ({"servers": ["ms-0:99999"]}, "port that is not a number from 1 to 65535"),
    ({"servers": ["http://ms-0/x"]}, "is not host:port"),
    ({"name": "gateway"}, "name = 'gateway': is a single label, not an FQDN"),
    ({"listen": {"prot": 5723}}, "listen.prot: not a setting the gateway knows"),
    ({"tls": {"certificate": "tls/tls.crt", "key": "tls/tls.key", "ca_bundle": "tls/ca.crt",
              "upstream_key": "tls/tls.key"}}, "give both or neither"),
    ({"tls": {"certificate": "nope.crt", "key": "tls/tls.key", "ca_bundle": "tls/ca.crt"}},
     "nope.crt is not a readable file. Fix: give the path of a readable PEM file"),
])
def test_each_mistake_names_the_field_the_value_and_the_fix(tmp_path: Path, change: dict[str, Any],
                                                            expected: str) -> None:
    tls_files(tmp_path)
    with pytest.raises(GatewayConfigError) as raised:
        parse_config(minimal(**change), tmp_path / "gateway.yaml")
    assert expected in str(raised.value)


def test_ipv6_servers_are_written_as_grpc_dials_them(tmp_path: Path) -> None:
    tls_files(tmp_path)
    config = parse_config(minimal(servers=["[fd00::1]", "[fd00::2]:6000"]), tmp_path / "gateway.yaml")
    assert config.servers == ["[fd00::1]:5723", "[fd00::2]:6000"]


def test_a_bad_file_exits_2_with_the_problems(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("group: contoso\nservers: [ms-0]\n")
    result = CliRunner().invoke(main, ["gateway", "--config", str(path)])
    assert result.exit_code == 2 and "name: missing. Fix: add name to the file" in result.output
    with pytest.raises(GatewayConfigError, match="YAML syntax"):
        path.write_text("group: [\n")
        load_config(path)


def test_the_gateway_refuses_a_host_that_runs_an_agent_and_nothing_else() -> None:
    processes = [(10, ["opsmgr", "gateway", "--config", "g"]), (11, ["opsmgr", "server"]),
                 (42, ["/usr/bin/python3", "-m", "opsmgr", "agent", "--config", "a.yaml"])]
    assert [(p.pid, p.role) for p in find_role_processes(processes, REFUSED_ROLES)] == [(42, "agent")]
