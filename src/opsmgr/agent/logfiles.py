"""Following log files through rotation and agent restarts, with nothing lost or repeated.

The tail remembers which file it reads by (device, inode), how far it read, and a fingerprint (SHA-256 of the
first bytes) of that file. Each poll it finds that file again:
- still at the path, fingerprint unchanged: read on from the offset;
- still at the path but shorter than the offset or with other first bytes (copytruncate): the old content was
  copied to a sibling (app.log.1); the sibling whose first bytes match the fingerprint holds the unread rest;
- another file at the path (rename rotation): the old inode is a sibling now and holds the unread rest.
The rest is drained from the sibling, then any newer rotated sibling (several rotations while the agent was
stopped), oldest first, then the live file from its start. Only whole lines are taken from
the live file; a rotated file's last line is taken whole or not, since nobody will finish it.

The state is written atomically after the caller has handed the lines on (`follow`), so a crash repeats at most
the lines of one chunk and loses none. A rotated file that is gone (deleted or compressed before it was drained)
is reported in `Chunk.lost`, never silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

FINGERPRINT_BYTES = 256
READ_LIMIT_BYTES = 1024 * 1024  # per poll step: bounds memory and time on a huge backlog
MAX_SIBLINGS = 32
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z")


@dataclass(frozen=True, slots=True)
class TailState:
    path: str
    device: int = 0
    inode: int = 0  # 0: no file yet; the first file that appears is read from its start
    offset: int = 0
    fingerprint: str = ""
    fingerprint_length: int = 0


@dataclass(slots=True)
class Chunk:
    lines: list[str] = field(default_factory=list)
    state: TailState | None = None
    lost: list[str] = field(default_factory=list)  # sentences saying what could not be read, and why
    more: bool = False  # the limit stopped this step: poll again at once


def _fingerprint(handle: int, length: int) -> str:
    return hashlib.sha256(os.pread(handle, length, 0)).hexdigest() if length else ""


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class LogFileTail:
    """Follows one log file; `state_dir` keeps where it stopped, across restarts."""

    def __init__(self, path: str, state_dir: Path, *, read_limit: int = READ_LIMIT_BYTES,
                 fingerprint_bytes: int = FINGERPRINT_BYTES) -> None:
        self.path = path
        self.state_file = state_dir / f"logfile-{hashlib.sha256(path.encode()).hexdigest()[:24]}.json"
        self.read_limit = read_limit
        self.fingerprint_bytes = fingerprint_bytes
        self.state: TailState | None = None

    # ------------------------------------------------------------ async API

    async def follow(self, handle: Callable[[list[str], list[str]], Awaitable[None]]) -> int:
        """Read everything new, handing each chunk's lines (and loss reports) on before saving the position."""
        if self.state is None:
            self.state = await asyncio.to_thread(self._load)
        total = 0
        while True:
            chunk = await asyncio.to_thread(self.step, self.state)
            if chunk.lines or chunk.lost:
                await handle(chunk.lines, chunk.lost)
                total += len(chunk.lines)
            if chunk.state is not None and chunk.state != self.state:
                await asyncio.to_thread(self._save, chunk.state)
                self.state = chunk.state
            if not chunk.more:
                return total

    # ------------------------------------------------------------ one step (runs in a worker thread)

    def step(self, state: TailState | None) -> Chunk:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if state is None:
            # The first time a rule looks at a file it starts at its end: history is not replayed as new events.
            if current is None:
                return Chunk(state=TailState(self.path))
            return Chunk(state=self._start_at(current, at_end=True))
        if state.inode == 0:
            return Chunk(state=self._start_at(current, at_end=False), more=True) if current is not None \
                else Chunk(state=state)
        if current is not None and _identity(current) == (state.device, state.inode):
            return self._read_live(state, current)
        return self._drain_rotated(state, current, renamed=True)

    def _start_at(self, st: os.stat_result, *, at_end: bool) -> TailState:
        length = min(self.fingerprint_bytes, st.st_size) if at_end else 0
        fingerprint = ""
        if length:
            with self._open(self.path) as handle:
                fingerprint = _fingerprint(handle, length)
        return TailState(self.path, st.st_dev, st.st_ino, st.st_size if at_end else 0, fingerprint, length)

    def _read_live(self, state: TailState, st: os.stat_result) -> Chunk:
        with self._open(self.path) as handle:
            same_start = _fingerprint(handle, state.fingerprint_length) == state.fingerprint
            if st.st_size < state.offset or not same_start:
                return self._drain_rotated(state, st, renamed=False)
            data = os.pread(handle, self.read_limit, state.offset)
            consumed, lines = _whole_lines(data, final=len(data) >= self.read_limit and b"\n" not in data)
            moved = replace(state, offset=state.offset + consumed)
            moved = self._grow_fingerprint(handle, moved)
            return Chunk(lines, moved, more=consumed > 0 and len(data) >= self.read_limit)

    def _grow_fingerprint(self, handle: int, state: TailState) -> TailState:
        length = min(self.fingerprint_bytes, state.offset)
        if length <= state.fingerprint_length:
            return state
        return replace(state, fingerprint=_fingerprint(handle, length), fingerprint_length=length)

    def _drain_rotated(self, state: TailState, current: os.stat_result | None, *, renamed: bool) -> Chunk:
        """Read the rest of the file the state names from wherever rotation put it, then start the new file."""
        sibling = self._find_rotated(state, by_inode=renamed)
        if sibling is None:
            lost = [] if state.offset == 0 and state.fingerprint_length == 0 else [
                f"{self.path} was rotated ({'renamed' if renamed else 'truncated'}) and the rotated copy is not "
                f"beside it (deleted or compressed before it was read); lines written after byte {state.offset} of the "
                "old file, if any, could not be read. Rotate with delaycompress to keep them"]
            fresh = self._start_at(current, at_end=False) if current is not None else TailState(self.path)
            return Chunk(state=fresh, lost=lost, more=current is not None)
        path, st = sibling
        with self._open(path) as handle:
            data = os.pread(handle, self.read_limit, state.offset)
        done = state.offset + len(data) >= st.st_size
        consumed, lines = _whole_lines(data, final=done)
        if done:
            successor = self._successor(st)
            if successor is not None:
                return Chunk(lines, TailState(self.path, successor.st_dev, successor.st_ino), more=True)
            fresh = self._start_at(current, at_end=False) if current is not None else TailState(self.path)
            return Chunk(lines, fresh, more=current is not None)
        # Keep draining the rotated file by its own identity; the live file waits at its start.
        return Chunk(lines, replace(state, device=st.st_dev, inode=st.st_ino, offset=state.offset + consumed),
                     more=True)

    def _siblings(self) -> list[tuple[str, os.stat_result]]:
        """Rotated copies beside the file ("app.log.1", "app.log-20260101"), newest first; compressed ones skipped."""
        directory, base = os.path.split(self.path)
        try:
            names = [n for n in os.listdir(directory or ".")
                     if n.startswith((f"{base}.", f"{base}-")) and not n.endswith(COMPRESSED)]
        except OSError:
            return []
        found: list[tuple[str, os.stat_result]] = []
        for name in names:
            full = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                st = os.stat(full)
                if stat.S_ISREG(st.st_mode):
                    found.append((full, st))
        found.sort(key=lambda c: c[1].st_mtime_ns, reverse=True)
        return found[:MAX_SIBLINGS]

    def _successor(self, drained: os.stat_result) -> os.stat_result | None:
        """The oldest rotated copy written after `drained`: the next generation when it rotated more than once."""
        newer = [st for _, st in self._siblings()
                 if st.st_mtime_ns > drained.st_mtime_ns and _identity(st) != _identity(drained)]
        return min(newer, key=lambda st: st.st_mtime_ns) if newer else None

    def _find_rotated(self, state: TailState, *, by_inode: bool) -> tuple[str, os.stat_result] | None:
        for full, st in self._siblings():
            if by_inode and _identity(st) != (state.device, state.inode):
                continue
            if st.st_size < state.offset:
                continue
            with contextlib.suppress(OSError), self._open(full) as handle:
                if _fingerprint(handle, state.fingerprint_length) == state.fingerprint:
                    return full, st
        return None

    # ------------------------------------------------------------ state file

    def _load(self) -> TailState | None:
        try:
            raw = json.loads(self.state_file.read_text())
            state = TailState(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # unreadable state: start at the end rather than replay the whole file
        return state if state.path == self.path else None

    def _save(self, state: TailState) -> None:
        """Write-then-rename with fsyncs, so a crash leaves the old state or the new, never half of one."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        with open(temporary, "w") as out:
            json.dump(asdict(state), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.state_file)
        directory = os.open(self.state_file.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @staticmethod
    @contextlib.contextmanager
    def _open(path: str) -> Iterator[int]:
        handle = os.open(path, os.O_RDONLY)
        try:
            yield handle
        finally:
            os.close(handle)


def _whole_lines(data: bytes, *, final: bool) -> tuple[int, list[str]]:
    """(bytes consumed, lines): only whole lines, unless `final` says the last piece will never be finished."""
    end = len(data) if final else data.rfind(b"\n") + 1
    if end <= 0:
        return 0, []
    text = data[:end].decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return end, [line.removesuffix("\r") for line in lines]
