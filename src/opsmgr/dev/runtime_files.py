"""File-system side of the local runtime: volume files, the hosts block and the claim on an address block.

Blocking, but small and local: the runtime calls these from its event loop only for a few files at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from opsmgr.dev.runtime_names import block_ids, block_network, splice_hosts
from opsmgr.dev.runtime_plan import ProjectedFile

DATA_LINK = "..data"
LOCK_DIR = Path("/run/lock/opsmgr-dev-runtime")


def write_volume(directory: Path, files: Sequence[ProjectedFile]) -> bool:
    """Make `directory` hold exactly `files`, swapped in at once as the kubelet does (a `..data` symlink).

    Readers see either the old or the new set, never a mix; returns whether anything changed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    current = directory / DATA_LINK
    if current.is_symlink() and _same(current, files):
        return False
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir(mode=0o755)
    for item in files:
        target = stamp / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.content)
        target.chmod(item.mode & 0o7777)
    temporary = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(stamp.name)
    previous = os.readlink(current) if current.is_symlink() else None
    temporary.replace(current)
    wanted = {Path(item.path).parts[0] for item in files}
    for top in wanted:
        link = directory / top
        if not link.is_symlink():
            link.symlink_to(Path(DATA_LINK) / top)
    for entry in directory.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in wanted and entry.is_symlink():
            entry.unlink()
    if previous is not None:
        shutil.rmtree(directory / previous, ignore_errors=True)
    return True


def _same(current: Path, files: Sequence[ProjectedFile]) -> bool:
    root = current.resolve()
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    if present != {item.path for item in files}:
        return False
    for item in files:
        path = root / item.path
        if path.read_bytes() != item.content or path.stat().st_mode & 0o7777 != item.mode & 0o7777:
            return False
    return True


def link_mount(root: Path, mount_path: str, target: Path) -> None:
    """Make `root`/mountPath a symlink to `target`, the volume (or its subPath) directory."""
    link = root / mount_path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(target)


class AddressBlockClaim:
    """An exclusive claim, by flock, on a 127.0.<n>.0/24 block: two runtimes on one machine never share addresses.

    The lock dies with the process holding it, so a killed runtime's block is free again (and its hosts block
    is recognised as stale).
    """

    def __init__(self, lock_dir: Path = LOCK_DIR) -> None:
        self.lock_dir = lock_dir
        self.block = 0
        self._file: IO[bytes] | None = None

    def acquire(self, preferred: Iterable[int] = range(1, 255)) -> int:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for block in preferred:
            handle = (self.lock_dir / f"block-{block}.lock").open("wb")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._file, self.block = handle, block
            return block
        raise RuntimeError(f"every 127.0.n.0/24 address block is claimed by a runtime (locks in {self.lock_dir})")

    def held_elsewhere(self, block_id: str) -> bool:
        """Whether the runtime that wrote hosts block `block_id` still runs (holds its lock)."""
        block = block_id.split(".")[2] if block_id.count(".") >= 3 else ""
        path = self.lock_dir / f"block-{block}.lock"
        if not block.isdigit() or not path.exists():
            return False
        if int(block) == self.block:
            return True
        with path.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def network(self) -> str:
        return str(block_network(self.block))


class HostsFile:
    """This runtime's block of a hosts file; edits are serialised with other runtimes by a lock file."""

    def __init__(self, path: Path, claim: AddressBlockClaim) -> None:
        self.path = path
        self.claim = claim
        self.block_id = claim.network
        self.last_written: list[tuple[str, list[str]]] | None = None

    def write(self, lines: Sequence[tuple[str, Sequence[str]]] | None) -> None:
        snapshot = None if lines is None else [(a, list(n)) for a, n in lines]
        if snapshot == self.last_written and snapshot is not None:
            return
        self.claim.lock_dir.mkdir(parents=True, exist_ok=True)
        with (self.claim.lock_dir / "hosts.lock").open("wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = self.path.read_text() if self.path.exists() else ""
            alive = [ident for ident in block_ids(text) if self.claim.held_elsewhere(ident)]
            _replace_text(self.path, splice_hosts(text, self.block_id, lines, keep=alive))
        self.last_written = snapshot

    def remove(self) -> None:
        self.write(None)


def _replace_text(path: Path, text: str) -> None:
    """Atomically when the file can be renamed over; in place when it cannot (a bind-mounted /etc/hosts)."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=".hosts.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        with path.open("r+") as out:
            out.write(text)
            out.truncate()
