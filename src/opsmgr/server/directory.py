"""Which agents and gateways this management group knows, and whether they are approved.

`AgentDirectory` is the seam: today a YAML file backs it (`FileAgentDirectory`, reloaded when it changes); later
the server's watch of Agent and Gateway resources will. Its lookups are synchronous reads of an in-memory
snapshot, so a stream opening never waits on I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import yaml

from opsmgr.pki.errors import CertificateError
from opsmgr.pki.names import normalize_fqdn

log = logging.getLogger(__name__)


class Approval(StrEnum):
    """Mirrors Agent.status.approval."""

    PENDING = "Pending"
    APPROVED = "Approved"
    REJECTED = "Rejected"


@dataclass(frozen=True)
class AgentRecord:
    fqdn: str
    approval: Approval
    gateway: str | None = None  # the gateway this agent reports through, if any


@dataclass(frozen=True)
class GatewayRecord:
    fqdn: str
    approval: Approval = Approval.APPROVED


class AgentDirectory(Protocol):
    """What the listener asks before and while it serves a stream; implementations keep a snapshot in memory."""

    def lookup(self, fqdn: str) -> AgentRecord | None: ...

    def gateway(self, fqdn: str) -> GatewayRecord | None: ...

    @property
    def loading(self) -> bool:
        """True while the directory is still being read: a miss then means "not known yet", not "unknown"."""
        ...


class DirectoryFileError(ValueError):
    """The directory file is not what it should be; the message names the entry, the value and the fix."""


@dataclass(frozen=True)
class DirectorySnapshot:
    agents: Mapping[str, AgentRecord]
    gateways: Mapping[str, GatewayRecord]

    def lookup(self, fqdn: str) -> AgentRecord | None:
        return self.agents.get(fqdn.lower().removesuffix("."))

    def gateway(self, fqdn: str) -> GatewayRecord | None:
        return self.gateways.get(fqdn.lower().removesuffix("."))

    @property
    def loading(self) -> bool:
        return False


def parse_directory(document: object) -> DirectorySnapshot:
    """`{agents: [{fqdn, approval, gateway?}], gateways: [{fqdn, approval?}]}` into a snapshot, or raise."""
    if document is None:
        return DirectorySnapshot({}, {})
    if not isinstance(document, dict):
        raise DirectoryFileError("the directory file must hold a mapping with 'agents' and 'gateways' lists")
    gateways: dict[str, GatewayRecord] = {}
    for index, entry in enumerate(_entries(document, "gateways")):
        fqdn = _entry_fqdn(entry, f"gateways[{index}]")
        gateways[fqdn] = GatewayRecord(fqdn, _approval(entry, f"gateways[{index}]", Approval.APPROVED))
    agents: dict[str, AgentRecord] = {}
    for index, entry in enumerate(_entries(document, "agents")):
        where = f"agents[{index}]"
        fqdn = _entry_fqdn(entry, where)
        via = entry.get("gateway")
        gateway = _entry_fqdn({"fqdn": via}, f"{where}.gateway") if via else None
        if gateway is not None and gateway not in gateways:
            raise DirectoryFileError(f"{where}.gateway = {via!r}: no such gateway. Fix: list it under 'gateways'")
        agents[fqdn] = AgentRecord(fqdn, _approval(entry, where, Approval.PENDING), gateway)
    return DirectorySnapshot(agents, gateways)


def _entries(document: dict[str, object], key: str) -> list[dict[str, object]]:
    entries = document.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DirectoryFileError(f"{key} = {entries!r}: not a list of mappings. Fix: write '- fqdn: NAME' entries")
    return entries


def _entry_fqdn(entry: dict[str, object], where: str) -> str:
    try:
        return normalize_fqdn(str(entry.get("fqdn", "")), f"{where}.fqdn")
    except CertificateError as exc:
        raise DirectoryFileError(str(exc)) from None


def _approval(entry: dict[str, object], where: str, default: Approval) -> Approval:
    value = entry.get("approval", default.value)
    try:
        return Approval(str(value))
    except ValueError:
        raise DirectoryFileError(f"{where}.approval = {value!r}: not an approval. Fix: use "
                                 f"{', '.join(a.value for a in Approval)}") from None


class FileAgentDirectory:
    """An `AgentDirectory` read from a YAML file and re-read whenever its modification time or size changes.

    A file that turns unreadable or malformed keeps the last good snapshot (logged), so a bad edit never opens
    or closes the door to every agent at once.
    """

    def __init__(self, path: Path, poll_seconds: float = 2.0) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self._stamp: tuple[float, int] | None = None
        self._snapshot = DirectorySnapshot({}, {})
        self._listeners: list[Callable[[], None]] = []
        self.load()

    def lookup(self, fqdn: str) -> AgentRecord | None:
        return self._snapshot.lookup(fqdn)

    def gateway(self, fqdn: str) -> GatewayRecord | None:
        return self._snapshot.gateway(fqdn)

    @property
    def loading(self) -> bool:
        return False  # read when constructed

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every reload that changed the snapshot (the listener re-checks live streams)."""
        self._listeners.append(listener)

    def load(self) -> bool:
        """Read the file now; raises DirectoryFileError only while no snapshot was ever loaded."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if stamp == self._stamp:
                return False
            # libyaml where PyYAML has it: 10,000 agents took the pure-Python loader over a second.
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            snapshot = parse_directory(yaml.load(self.path.read_text(), Loader=loader))  # noqa: S506 (a safe loader)
        except (OSError, yaml.YAMLError, DirectoryFileError) as exc:
            if self._stamp is None:
                raise DirectoryFileError(f"{self.path}: {exc}") from None
            log.error("directory file unusable, keeping the previous snapshot",
                      extra={"fields": {"file": str(self.path), "error": str(exc)}})
            return False
        self._stamp = stamp
        changed = snapshot != self._snapshot
        self._snapshot = snapshot
        if changed:
            log.info("directory loaded", extra={"fields": {"file": str(self.path), "agents": len(snapshot.agents),
                                                           "gateways": len(snapshot.gateways)}})
        return changed

    async def watch(self) -> None:
        """Poll for changes until cancelled; stat and a small read, so done in a thread to keep the loop free."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            if await asyncio.to_thread(self.load):
                for listener in self._listeners:
                    listener()
