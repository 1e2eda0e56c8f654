"""The agent's config file errors (field, value, fix; exit 2, no traceback) and the management-host refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from opsmgr.agent.config import AgentConfigError, load_config, parse_config
from opsmgr.agent.host_role import find_management_processes, role_of
from opsmgr.cli import main

VALID = {"fqdn": "web01.contoso.test", "servers": {"primary": "ms-0.ms.opsmgr.svc"},
         "certificates": {"directory": "identity"}, "queue": {"path": "queue.sqlite"}}


def test_a_minimal_config_gets_operations_manager_defaults(tmp_path: Path) -> None:
    config = parse_config(VALID, tmp_path / "agent.yaml")
    settings = config.connection_settings()
    assert settings.primary == "ms-0.ms.opsmgr.svc:5723"
    assert (settings.primary_attempts, settings.failback_seconds) == (3, 60.0)
    assert (settings.backoff.initial_seconds, settings.backoff.max_seconds, settings.backoff.multiplier) == (5, 30, 1.5)
    assert config.queue.limit_bytes == 100 * 1024 * 1024
    assert config.certificates.directory == tmp_path / "identity", "relative paths are relative to the file"


def test_every_bad_field_is_named_with_its_value_and_fix(tmp_path: Path) -> None:
    bad = {**VALID, "fqdn": "web01", "queue": {"path": "q", "limit_bytes": 10}, "colour": "red",
           "servers": {"primary": "ms:99999"}}
    with pytest.raises(AgentConfigError) as raised:
        parse_config(bad, tmp_path / "agent.yaml")
    problems = raised.value.problems
    assert any(p.startswith("fqdn = 'web01'") and "Fix:" in p for p in problems)
    assert any(p.startswith("queue.limit_bytes = 10") and "at least" in p for p in problems)
    assert any(p.startswith("servers.primary = 'ms:99999'") and "port" in p for p in problems)
    assert any(p.startswith("colour:") and "not a setting" in p for p in problems)


def test_opsmgr_agent_exits_2_on_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("fqdn: web01.contoso.test\nqueue: {path: q, limit_bytes: nope}\n")
    result = CliRunner().invoke(main, ["agent", "--config", str(path)])
    assert result.exit_code == 2
    assert "queue.limit_bytes = 'nope'" in result.output and "servers: missing" in result.output
    assert "Traceback" not in result.output


def test_an_unreadable_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="readable YAML"):
        load_config(tmp_path / "missing.yaml")


def test_a_config_file_is_read_with_relative_paths_from_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("fqdn: web01.contoso.test\nservers: {primary: ms-0.ms.opsmgr.svc, failover: [ms-1:6000]}\n"
                    "certificates: {directory: identity}\nqueue: {path: queue.sqlite, limit_bytes: 1048576}\n")
    config = load_config(path)
    assert (config.fqdn, config.servers.failover, config.queue.limit_bytes) == ("web01.contoso.test", ["ms-1:6000"],
                                                                               1048576)
    assert config.queue.path == tmp_path / "queue.sqlite"


def test_a_yaml_syntax_error_names_the_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("fqdn: web01.contoso.test\nservers: {primary: ms-0\n")
    with pytest.raises(AgentConfigError) as raised:
        load_config(path)
    problem = raised.value.problems[0]
    assert problem.startswith("YAML syntax: ")
    assert "line 3" in problem and problem.endswith("Fix: correct the file at the line shown")


def test_a_value_yaml_reads_as_a_date_is_named_as_yaml_read_it(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("fqdn: 2026-12-07\nservers: {primary: ms-0}\ncertificates: {directory: i}\nqueue: {path: q}\n")
    with pytest.raises(AgentConfigError) as raised:
        load_config(path)
    assert raised.value.problems == ["fqdn = datetime.date(2026, 12, 7): Input should be a valid string. Fix: give "
                                     "this computer's FQDN, the CN of its certificate (e.g. web01.contoso.com)"]


@pytest.mark.parametrize(("cmdline", "role"), [
    (["/venv/bin/python", "/venv/bin/opsmgr", "server", "--config", "s.yaml"], "server"),
    (["python3", "-m", "opsmgr", "gateway", "--config", "g.yaml"], "gateway"),
    (["opsmgr", "--verbose", "server"], "server"),
    (["/usr/local/bin/opsmgr", "agent", "--config", "a.yaml"], None),
    (["vim", "server.py"], None),
    (["python", "-m", "pytest", "-k", "server"], None),
])
def test_management_processes_are_recognised_however_started(cmdline: list[str], role: str | None) -> None:
    assert role_of(cmdline) == role


def test_the_refusal_names_the_process() -> None:
    found = find_management_processes([(10, ["opsmgr", "agent"]), (42, ["opsmgr", "gateway", "--config", "g"])])
    assert [(p.pid, p.role) for p in found] == [(42, "gateway")]
