"""The revocation source a listener on 5723 (management server or gateway) consults: a file of revocation records,
re-read when it changes.

The file holds `RevocationSet.to_records()` as YAML or JSON (a list, or a mapping with a `revocations` list). The
operator will write it from the group's revocation Secret. Revocation is permanent, so an unreadable or malformed
file never shrinks the set: the listener keeps the union of what it has seen and logs the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import yaml

from opsmgr.pki.errors import CertificateError
from opsmgr.pki.revocation import RevocationSet

log = logging.getLogger(__name__)


def read_revocations(path: Path) -> RevocationSet:
    document = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    if document is None:
        return RevocationSet()
    if isinstance(document, dict):
        document = document.get("revocations") or []
    return RevocationSet.from_records(document)


class RevocationWatch:
    """Holds the current `RevocationSet` and tells listeners which serials became revoked."""

    def __init__(self, path: Path | None, poll_seconds: float = 1.0) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self.current = RevocationSet()
        self._stamp: tuple[int, int] | None = None
        self._listeners: list[Callable[[frozenset[int]], None]] = []
        if path is not None:
            self.current = read_revocations(path)  # a bad file at start-up is a configuration error
            self._stamp = _stamp(path)

    def on_revoked(self, listener: Callable[[frozenset[int]], None]) -> None:
        self._listeners.append(listener)

    def reload(self) -> frozenset[int]:
        """Re-read the file if it changed; returns the serials revoked since the previous read."""
        if self.path is None:
            return frozenset()
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return frozenset()
            fresh = read_revocations(self.path)
        except (OSError, yaml.YAMLError, CertificateError) as exc:
            log.error("revocation file unusable, keeping every revocation seen so far",
                      extra={"fields": {"file": str(self.path), "error": str(exc)}})
            return frozenset()
        self._stamp = stamp
        merged = self.current
        for entry in fresh.entries.values():
            merged = merged.revoke(entry.serial, entry.reason, entry.revoked_at, entry.name)
        added = merged.revoked_since(self.current)
        self.current = merged
        return added

    def apply(self, revocations: RevocationSet) -> None:
        """Adopt a set from another source (the future Kubernetes watch); closes the newly revoked streams."""
        merged = self.current
        for entry in revocations.entries.values():
            merged = merged.revoke(entry.serial, entry.reason, entry.revoked_at, entry.name)
        added = merged.revoked_since(self.current)
        self.current = merged
        self._notify(added)

    def _notify(self, added: frozenset[int]) -> None:
        if added:
            log.warning("certificates revoked", extra={"fields": {"serials": sorted(format(s, "x") for s in added)}})
            for listener in self._listeners:
                listener(added)

    async def watch(self) -> None:
        """Poll until cancelled; the read runs in a thread so the event loop never waits on the disk."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            self._notify(await asyncio.to_thread(self.reload))


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
