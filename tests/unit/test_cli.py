"""The `opsmgr` command answers --help and --version without a cluster or database."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from opsmgr import __version__
from opsmgr.cli import main


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"opsmgr {__version__}"
    assert __version__ != "0.0.0+unknown", "the package is not installed: run `make venv`"


def test_help_lists_subcommands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "dev" in result.output


def test_unknown_subcommand_names_it_and_exits_nonzero() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code == 2
    assert "frobnicate" in result.output


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "opsmgr", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("opsmgr ")
