"""The console's configuration file: every problem names the field, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsmgr.console.config import ConfigError, parse_config


def test_a_complete_file_validates_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    config = parse_config({"tls": {"certificate": "tls.crt", "key": "tls.key"},
                           "databases": {"operational_dsn": "postgresql://a@h/o", "warehouse_dsn": "postgres://a@h/w"},
                           "kubernetes": {"namespace": "opsmgr"}}, tmp_path / "c.yaml", tmp_path)
    assert config.listen.port == 8443
    assert config.tls.certificate == tmp_path / "tls.crt"
    assert config.kubernetes.kubeconfig is None
    assert config.refresh_seconds == 30


def test_problems_name_the_field_the_value_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"tls": {"certificate": "missing.crt", "key": "missing.key"},
                      "databases": {"operational_dsn": "mysql://u:secret@h/o", "warehouse_dsn": "postgresql://h/w"},
                      "listen": {"port": 70000}, "refresh": 5}, tmp_path / "c.yaml", tmp_path)
    text = str(caught.value)
    assert "tls.certificate = " in text and "give the path of a readable PEM file" in text
    assert "databases.operational_dsn = ***: is not a PostgreSQL URL" in text and "secret" not in text
    assert "listen.port = 70000" in text
    assert "kubernetes: missing. Fix: add kubernetes to the file" in text
    assert "refresh = 5: not a known setting" in text


def test_dsns_may_come_from_files_such_as_a_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    (tmp_path / "uri").write_text("postgresql://app:pw@db/app\n")
    config = parse_config({"tls": {"certificate": "tls.crt", "key": "tls.key"},
                           "databases": {"operational_dsn_file": "uri", "warehouse_dsn": "postgresql://w@h/w"},
                           "kubernetes": {"namespace": "opsmgr"}}, tmp_path / "c.yaml", tmp_path)
    assert config.databases.operational_dsn == "postgresql://app:pw@db/app"
    with pytest.raises(ConfigError) as caught:
        parse_config({"tls": {"certificate": "tls.crt", "key": "tls.key"},
                      "databases": {"operational_dsn_file": "gone", "warehouse_dsn": "postgresql://w@h/w"},
                      "kubernetes": {"namespace": "opsmgr"}}, tmp_path / "c.yaml", tmp_path)
    assert "databases.operational_dsn_file = " in str(caught.value)
    assert "No such file or directory" in str(caught.value)
