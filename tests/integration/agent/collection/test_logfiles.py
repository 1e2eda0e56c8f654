"""Log files followed on a real file system through rename and copytruncate rotation and agent restarts."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

from opsmgr.agent.logfiles import LogFileTail


class Collected:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lost: list[str] = []

    async def __call__(self, lines: list[str], lost: list[str]) -> None:
        self.lines += lines
        self.lost += lost


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as out:
        out.writelines(f"{line}\n" for line in lines)


async def restart_and_read(log: Path, state: Path, **options: int) -> Collected:
    """A fresh tail over the same state directory: what an agent sees after a restart."""
    collected = Collected()
    await LogFileTail(str(log), state, **options).follow(collected)
    return collected


def write_raw(path: Path, text: str) -> None:
    with open(path, "a") as out:
        out.write(text)


def copytruncate(path: Path) -> None:
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+") as out:
        out.truncate(0)


def compress_away(path: Path) -> None:
    with open(path, "rb") as source, gzip.open(path.with_name(f"{path.name}.1.gz"), "wb") as target:
        shutil.copyfileobj(source, target)
    path.unlink()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs" / "app.log"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


async def test_history_is_not_replayed_and_new_lines_are_read_once(log: Path, state: Path) -> None:
    append(log, "old 1", "old 2")
    tail, collected = LogFileTail(str(log), state), Collected()
    assert await tail.follow(collected) == 0
    append(log, "new 1", "new 2")
    await tail.follow(collected)
    await tail.follow(collected)
    assert collected.lines == ["new 1", "new 2"]


async def test_a_file_that_appears_later_is_read_from_its_start(log: Path, state: Path) -> None:
    tail, collected = LogFileTail(str(log), state), Collected()
    await tail.follow(collected)
    append(log, "first")
    await tail.follow(collected)
    assert collected.lines == ["first"]


async def test_a_partial_line_waits_for_its_end(log: Path, state: Path) -> None:
    write_raw(log, "")
    tail, collected = LogFileTail(str(log), state), Collected()
    await tail.follow(collected)
    write_raw(log, "half")
    await tail.follow(collected)
    assert collected.lines == []
    write_raw(log, " and the rest\r\nnext\n")
    await tail.follow(collected)
    assert collected.lines == ["half and the rest", "next"]


async def test_rename_rotation_while_running(log: Path, state: Path) -> None:
    append(log, "before")
    tail, collected = LogFileTail(str(log), state), Collected()
    await tail.follow(collected)
    append(log, "a1", "a2")
    await tail.follow(collected)
    append(log, "a3 written just before rotation")
    os.rename(log, log.with_name("app.log.1"))
    append(log, "b1")
    await tail.follow(collected)
    append(log, "b2")
    await tail.follow(collected)
    assert collected.lines == ["a1", "a2", "a3 written just before rotation", "b1", "b2"]


async def test_rename_rotation_across_a_restart(log: Path, state: Path) -> None:
    append(log, "before")
    await restart_and_read(log, state)
    append(log, "a1")
    assert (await restart_and_read(log, state)).lines == ["a1"]
    append(log, "a2 unread when the agent stopped")
    os.rename(log, log.with_name("app.log.1"))
    append(log, "b1")
    assert (await restart_and_read(log, state)).lines == ["a2 unread when the agent stopped", "b1"]
    append(log, "b2")
    assert (await restart_and_read(log, state)).lines == ["b2"]


async def test_copytruncate_rotation_across_a_restart(log: Path, state: Path) -> None:
    append(log, "before")
    await restart_and_read(log, state)
    append(log, "a1")
    assert (await restart_and_read(log, state)).lines == ["a1"]
    append(log, "a2 unread when the agent stopped")
    copytruncate(log)
    append(log, "b1")
    assert (await restart_and_read(log, state)).lines == ["a2 unread when the agent stopped", "b1"]
    append(log, "b2")
    assert (await restart_and_read(log, state)).lines == ["b2"]


async def test_copytruncate_is_seen_even_when_the_new_content_is_longer_than_the_old_offset(
        log: Path, state: Path) -> None:
    append(log, "x")
    await restart_and_read(log, state)
    append(log, "a1")
    await restart_and_read(log, state)
    copytruncate(log)
    append(log, "a much longer first line after the truncation", "b2")
    assert (await restart_and_read(log, state)).lines == ["a much longer first line after the truncation", "b2"]


async def test_two_rename_rotations_while_stopped_read_every_generation_in_order(log: Path, state: Path) -> None:
    append(log, "before")
    await restart_and_read(log, state)
    append(log, "gen1 unread")
    os.rename(log, log.with_name("app.log.1"))
    append(log, "gen2")
    os.utime(log, ns=(os.stat(log.with_name("app.log.1")).st_mtime_ns + 10**9,) * 2)
    os.rename(log.with_name("app.log.1"), log.with_name("app.log.2"))
    os.rename(log, log.with_name("app.log.1"))
    append(log, "gen3")
    os.utime(log, ns=(os.stat(log.with_name("app.log.1")).st_mtime_ns + 10**9,) * 2)
    assert (await restart_and_read(log, state)).lines == ["gen1 unread", "gen2", "gen3"]


async def test_a_rotated_file_compressed_before_it_was_read_is_reported_not_hidden(log: Path, state: Path) -> None:
    append(log, "before")
    await restart_and_read(log, state)
    append(log, "a1 lost")
    compress_away(log)
    append(log, "b1")
    collected = await restart_and_read(log, state)
    assert collected.lines == ["b1"]
    assert len(collected.lost) == 1 and "delaycompress" in collected.lost[0]


async def test_a_backlog_larger_than_one_read_arrives_whole_and_in_order(log: Path, state: Path) -> None:
    write_raw(log, "")
    await restart_and_read(log, state)
    expected = [f"line {n:05d} " + "x" * 50 for n in range(3000)]
    append(log, *expected)
    os.rename(log, log.with_name("app.log.1"))
    append(log, "after")
    collected = await restart_and_read(log, state, read_limit=4096)
    assert collected.lines == [*expected, "after"]


async def test_lines_are_read_again_when_handing_them_on_failed(log: Path, state: Path) -> None:
    write_raw(log, "")
    await restart_and_read(log, state)
    append(log, "must not be lost")

    async def failing(lines: list[str], lost: list[str]) -> None:
        raise OSError("queue disk full")

    with pytest.raises(OSError):
        await LogFileTail(str(log), state).follow(failing)
    assert (await restart_and_read(log, state)).lines == ["must not be lost"]


async def test_a_symlinked_log_file_is_followed(tmp_path: Path, state: Path) -> None:
    target = tmp_path / "real.log"
    write_raw(target, "")
    link = tmp_path / "link.log"
    link.symlink_to(target)
    await restart_and_read(link, state)
    append(target, "through the link")
    assert (await restart_and_read(link, state)).lines == ["through the link"]
