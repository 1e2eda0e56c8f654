"""The revocation file only ever adds revocations; presence keeps each fact the watcher needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from opsmgr.pki import RevocationReason, RevocationSet
from opsmgr.server.presence import AgentPresence, PresenceLedger
from opsmgr.server.revocations import RevocationWatch

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def write(path: Path, revocations: RevocationSet) -> None:
    path.write_text(yaml.safe_dump({"revocations": revocations.to_records()}))


def test_a_reload_reports_the_serials_newly_revoked(tmp_path: Path) -> None:
    path = tmp_path / "revocations.yaml"
    first = RevocationSet().revoke(0x10, RevocationReason.KEY_COMPROMISE, NOW)
    write(path, first)
    watch = RevocationWatch(path)
    assert watch.reload() == frozenset()
    write(path, first.revoke(0x20, RevocationReason.SUPERSEDED, NOW, "web02.contoso.test"))
    assert watch.reload() == {0x20}
    assert 0x10 in watch.current and 0x20 in watch.current


def test_a_shrunk_or_broken_file_never_forgets_a_revocation(tmp_path: Path) -> None:
    path = tmp_path / "revocations.yaml"
    write(path, RevocationSet().revoke(0x10, RevocationReason.KEY_COMPROMISE, NOW))
    watch = RevocationWatch(path)
    path.write_text("revocations: []\n")
    assert watch.reload() == frozenset() and 0x10 in watch.current
    path.write_text("revocations: [{serial: zz}]\n")
    assert watch.reload() == frozenset() and 0x10 in watch.current


def test_another_source_closes_what_it_revokes() -> None:
    watch = RevocationWatch(None)
    closed: list[frozenset[int]] = []
    watch.on_revoked(closed.append)
    watch.apply(RevocationSet().revoke(0x30, RevocationReason.UNSPECIFIED, NOW))
    watch.apply(RevocationSet().revoke(0x30, RevocationReason.UNSPECIFIED, NOW))
    assert closed == [frozenset({0x30})]


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[AgentPresence | None, AgentPresence]] = []

    def presence_changed(self, before: AgentPresence | None, after: AgentPresence) -> None:
        self.changes.append((before, after))


def test_heartbeats_and_goodbyes_surface_to_the_watcher_and_an_older_stream_never_overrides() -> None:
    recorder = Recorder()
    ledger = PresenceLedger(listeners=[recorder])
    ledger.connected("web01.contoso.test", "s1", None, NOW, None)
    ledger.heartbeat("web01.contoso.test", "s1", NOW + timedelta(seconds=60), 1, None)
    ledger.connected("web01.contoso.test", "s2", None, NOW + timedelta(seconds=61), None)
    ledger.disconnected("web01.contoso.test", "s1", NOW + timedelta(seconds=62))  # the replaced stream ends
    ledger.goodbye("web01.contoso.test", "s2", NOW + timedelta(seconds=90), "planned shutdown")
    ledger.disconnected("web01.contoso.test", "s2", NOW + timedelta(seconds=91))
    presence = ledger.get("web01.contoso.test")
    assert presence is not None and not presence.connected
    assert presence.last_heartbeat_at == NOW + timedelta(seconds=60), "a new stream keeps the last heartbeat"
    assert presence.goodbye_reason == "planned shutdown"
    assert len(recorder.changes) == 5
