"""`opsmgr dev runtime` explains what it needs before it touches a cluster."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from opsmgr.cli import main


def test_runtime_is_listed_under_dev() -> None:
    result = CliRunner().invoke(main, ["dev", "--help"])
    assert result.exit_code == 0 and "runtime" in result.output


def test_runtime_without_namespaces_names_the_options_and_exits_2(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = CliRunner().invoke(main, ["dev", "runtime", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 2
    assert "--namespace" in result.output and "--all-namespaces" in result.output


def test_runtime_names_the_unreachable_api_server_and_how_to_start_one(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n")
    result = CliRunner().invoke(main, ["dev", "runtime", "--kubeconfig", str(kubeconfig), "-n", "ops",
                                       "--root", str(tmp_path / "root"), "--hosts-file", str(tmp_path / "hosts")])
    assert result.exit_code == 1
    assert "cannot reach the API server https://127.0.0.1:1" in result.output
    assert "opsmgr dev cluster up" in result.output
