"""The console's charting library (uPlot) from the npm registry: fetched at build time, never committed.

`npm pack` (the ordinary client, so the machine's registry settings apply) downloads the pinned version's tarball;
its SHA-512 must equal the integrity the registry published for that version, pinned here, so a changed tarball
is refused. The files the console serves are unpacked into a cache outside the repository, keyed by version
(~/.cache/opsmgr/npm/uplot-<version>/); a wheel build copies them into the package (setup.py). Standard library
only: setup.py imports this before anything is installed.

    python -m opsmgr.console.assets [--print-dir]
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

UPLOT_VERSION = "1.6.32"
UPLOT_INTEGRITY = "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
# tarball member -> name served under /vendor/
FILES = {"package/dist/uPlot.iife.min.js": "uPlot.iife.min.js", "package/dist/uPlot.min.css": "uPlot.min.css",
         "package/LICENSE": "uPlot.LICENSE"}
PACKAGED = Path(__file__).parent / "vendor"  # where a wheel build puts them


class AssetError(RuntimeError):
    """The chart library cannot be had; the message says what to run."""


def cache_dir(version: str = UPLOT_VERSION) -> Path:
    root = Path(os.environ.get("OPSMGR_CACHE") or Path.home() / ".cache" / "opsmgr")
    return root / "npm" / f"uplot-{version}"


def complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def find_assets() -> Path | None:
    """The folder to serve the library from: the package's copy (an installed wheel), else the build cache."""
    for directory in (PACKAGED, cache_dir()):
        if complete(directory):
            return directory
    return None


def check_integrity(data: bytes, integrity: str = UPLOT_INTEGRITY) -> None:
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise AssetError(f"uplot-{UPLOT_VERSION}.tgz has integrity {algorithm}-{actual}, not the pinned "
                         f"{integrity}: the download was altered or the pin is wrong; refusing it")


def unpack(data: bytes, directory: Path) -> None:
    """The served files of a verified tarball into `directory`, atomically (a half-written cache never counts)."""
    staging = Path(tempfile.mkdtemp(prefix=".uplot-", dir=directory.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member, name in FILES.items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise AssetError(f"uplot-{UPLOT_VERSION}.tgz lacks {member}")
                (staging / name).write_bytes(extracted.read())
        shutil.rmtree(directory, ignore_errors=True)
        staging.replace(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(version: str = UPLOT_VERSION) -> Path:
    """The cache folder with the library in it, downloading it with `npm pack` when it is not there yet."""
    directory = cache_dir(version)
    if complete(directory):
        return directory
    given = os.environ.get("OPSMGR_UPLOT_TARBALL")  # a tarball `npm pack` fetched elsewhere (the image's build)
    if given:
        data = Path(given).read_bytes()
        check_integrity(data)
        directory.parent.mkdir(parents=True, exist_ok=True)
        unpack(data, directory)
        return directory
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError("npm is missing, and the console's chart library comes from the npm registry: install "
                         "Debian's npm (`apt-get install npm`) or run `make console-assets`")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="opsmgr-npm-") as work:
        result = subprocess.run([npm, "pack", f"uplot@{version}", "--pack-destination", work, "--silent"],
                                capture_output=True, text=True, check=False, cwd=work)
        if result.returncode != 0:
            raise AssetError(f"npm pack uplot@{version} failed ({result.returncode}): {result.stderr.strip()}")
        data = (Path(work) / f"uplot-{version}.tgz").read_bytes()
    check_integrity(data)
    unpack(data, directory)
    return directory


def main(argv: list[str]) -> int:
    try:
        directory = fetch()
    except AssetError as exc:
        print(f"opsmgr console assets: {exc}", file=sys.stderr)
        return 1
    if "--print-dir" in argv:
        print(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
