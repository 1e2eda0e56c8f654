"""Generates the agent channel's protobuf/gRPC code whenever the package is built (wheel or editable install), and
copies the console's chart library (fetched from the npm registry into a cache, see opsmgr/console/assets.py) into
the built package.

Everything else about the package is in pyproject.toml; the generated files are not committed.
"""

from __future__ import annotations

import shutil
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
        self._bundle_console_assets()

    def _bundle_console_assets(self) -> None:
        from opsmgr.console import assets  # noqa: PLC0415

        try:
            folder = assets.fetch()
        except (assets.AssetError, OSError) as exc:
            # An editable install serves the library from the cache instead; `make console-assets` fills it.
            print(f"warning: the console's chart library is not bundled: {exc}", file=sys.stderr)
            return
        target = Path(self.build_lib) / "opsmgr" / "console" / "vendor"
        target.mkdir(parents=True, exist_ok=True)
        for name in assets.FILES.values():
            shutil.copyfile(folder / name, target / name)


setup(cmdclass={"build_py": BuildWithProtocol})
