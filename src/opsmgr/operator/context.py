"""What every handler shares, kept in kopf's memo: the one API client, images, locks and a short-lived CA cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from opsmgr.operator.kube import Kube
from opsmgr.pki import CertificateAuthority

DEFAULT_IMAGE = "ghcr.io/opsmgr/opsmgr:0.1.0"
DEFAULT_POSTGRES_IMAGE = "postgres:16"
# Agents of one group issue from the same CA; re-reading its Secret for each of thousands of agents is waste.
CA_CACHE_SECONDS = 30.0
# Agent reconciles in flight at once. kopf runs one worker per object without a limit (see main.startup), so 10,000
# new Agents started 10,000 reconciles together: each held its parsed group and Agent while waiting for the API
# server, the operator grew past 1 GB, and the API server answered 429. As many as the API connection pool
# (main.API_CONNECTIONS) keeps the pool busy; 32 let the backlog of new Agents, and the memory, grow further.
AGENT_RECONCILES = 64


@dataclass
class OperatorContext:
    kube: Kube
    image: str = DEFAULT_IMAGE
    postgres_image: str = DEFAULT_POSTGRES_IMAGE
    locks: dict[Hashable, asyncio.Lock] = field(default_factory=dict)
    agent_reconciles: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(AGENT_RECONCILES))
    _cas: dict[Hashable, tuple[float, CertificateAuthority]] = field(default_factory=dict)

    def lock(self, key: Hashable) -> asyncio.Lock:
        """One lock per key (a group, a revocation list), created on first use."""
        return self.locks.setdefault(key, asyncio.Lock())

    def cached_ca(self, key: Hashable) -> CertificateAuthority | None:
        entry = self._cas.get(key)
        if entry is None or time.monotonic() - entry[0] > CA_CACHE_SECONDS:
            return None
        return entry[1]

    def remember_ca(self, key: Hashable, ca: CertificateAuthority) -> None:
        self._cas[key] = (time.monotonic(), ca)

    def forget(self, key: Hashable) -> None:
        self._cas.pop(key, None)
        self.locks.pop(key, None)


def context_of(memo: Any) -> OperatorContext:
    """The context the startup handler put into kopf's memo."""
    context = memo.context
    assert isinstance(context, OperatorContext), "the operator's startup handler sets memo.context"
    return context
