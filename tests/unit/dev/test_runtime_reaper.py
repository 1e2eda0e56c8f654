"""The reaper remembers the process groups a runtime still runs."""

from __future__ import annotations

from opsmgr.dev.runtime_reaper import follow


def test_groups_that_exited_are_forgotten_and_nonsense_is_ignored() -> None:
    assert follow(["+100\n", "+200\n", "-100\n", "+1\n", "+0\n", "+abc\n", "\n"]) == {200}
