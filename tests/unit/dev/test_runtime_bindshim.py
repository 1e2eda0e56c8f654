"""The bind shim turns a Pod process's wildcard binds into binds to its pod IP and leaves other binds alone."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from opsmgr.dev.runtime_bindshim import build_bind_shim

PROBE = """
import socket
wild = socket.socket(); wild.bind(("0.0.0.0", 0))
dual = socket.socket(socket.AF_INET6); dual.bind(("::", 0))
exact = socket.socket(); exact.bind(("127.0.0.1", 0))
print(wild.getsockname()[0], dual.getsockname()[0], exact.getsockname()[0])
"""


async def test_wildcard_binds_land_on_the_pod_ip(tmp_path: Path) -> None:
    library = await build_bind_shim(tmp_path)
    if library is None:
        pytest.skip("no C compiler on this machine")
    assert await build_bind_shim(tmp_path) == library  # built once per source version
    env = {**os.environ, "LD_PRELOAD": str(library), "POD_IP": "127.0.9.9"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", PROBE, env=env,
                                                   stdout=asyncio.subprocess.PIPE)
    output, _ = await process.communicate()
    assert output.decode().split() == ["127.0.9.9", "::ffff:127.0.9.9", "127.0.0.1"]
