"""Generates the agent channel's protobuf/gRPC code whenever the package is built (wheel or editable install).

Everything else about the package is in pyproject.toml; the generated files are not committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SRC = Path(__file__).parent / "src"


class BuildWithProtocol(build_py):
    def run(self) -> None:
        sys.path.insert(0, str(SRC))  # the build runs before the package is installed
        from opsmgr.protocol.codegen import generate  # noqa: PLC0415

        generate(SRC)
        super().run()


setup(cmdclass={"build_py": BuildWithProtocol})
