"""The configuration file: defaults, and one message per bad field naming the path, the value and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from opsmgr.cli import main
from opsmgr.protocol.limits import AGENT_PORT
from opsmgr.server.config import ConfigError, load_config


def write(folder: Path, **overrides: Any) -> Path:
    for name in ("tls.crt", "tls.key", "ca.crt", "directory.yaml"):
        (folder / name).write_text("x")
    document: dict[str, Any] = {
        "group": "contoso", "name": "ms-0.ms-hl.opsmgr.svc",
        "tls": {"certificate": "tls.crt", "key": "tls.key", "ca_bundle": "ca.crt"},
        "databases": {"operational_dsn": "postgresql://opsmgr@db/operational",
                      "warehouse_dsn": "postgresql://opsmgr@db/warehouse"},
        "directory": {"file": "directory.yaml"},
    }
    document.update(overrides)
    path = folder / "server.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return raised.value.problems


def test_a_minimal_file_takes_operations_manager_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    assert config.listen.port == AGENT_PORT == 5723
    assert config.heartbeat_interval_seconds == 60
    assert config.tls.certificate == tmp_path / "tls.crt", "relative paths are taken from the file's folder"


def test_each_bad_field_is_named_with_its_value_and_a_fix(tmp_path: Path) -> None:
    found = problems(write(tmp_path, listen={"port": 70000}, group="Not A Group",
                           tls={"certificate": "missing.crt", "key": "tls.key", "ca_bundle": "ca.crt"}))
    assert len(found) == 3
    assert any(line.startswith("listen.port = 70000:") and "Fix: give a TCP port" in line for line in found)
    assert any(line.startswith("group = 'Not A Group':") for line in found)
    assert any(line.startswith("tls.certificate = ") and "missing.crt is not a readable file" in line
               for line in found)


def test_a_misspelt_or_missing_setting_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, lisen={"port": 1})
    document = yaml.safe_load(path.read_text())
    del document["databases"]
    path.write_text(yaml.safe_dump(document))
    found = problems(path)
    assert "lisen = {'port': 1}: not a known setting. Fix: remove it or correct its spelling" in found
    assert "databases: missing. Fix: add databases to the file" in found


def test_a_dsn_with_a_password_is_never_echoed(tmp_path: Path) -> None:
    found = problems(write(tmp_path, databases={"operational_dsn": "mysql://u:hunter2@db/x",
                                                "warehouse_dsn": "postgresql://u@db/w"}))
    assert found == ["databases.operational_dsn = ***: is not a PostgreSQL URL. Fix: write "
                     "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"]


@pytest.fixture(autouse=True)
def _restore_cipher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `opsmgr server` pins gRPC's cipher suites for its process; undo that for the rest of this test run.
    monkeypatch.setenv("GRPC_SSL_CIPHER_SUITES", "")


def test_opsmgr_server_exits_2_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["server", "--config", str(write(tmp_path, listen={"port": -1}))])
    assert result.exit_code == 2
    assert "listen.port = -1" in result.output and "Traceback" not in result.output


def test_opsmgr_server_check_accepts_a_valid_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["server", "--check", "--config", str(write(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "configuration is valid" in result.output


def test_unreadable_and_unparsable_files_are_configuration_errors(tmp_path: Path) -> None:
    assert "No such file" in problems(tmp_path / "absent.yaml")[0]
    broken = tmp_path / "broken.yaml"
    broken.write_text("group: [unclosed")
    assert problems(broken)[0].startswith("(YAML)")
