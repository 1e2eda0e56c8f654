"""Kubernetes I/O shared by the components that talk to the API server with plain dicts (the local runtime and the
management server): decoding `_preload_content=False` replies, and a list-then-watch cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

WATCH_SECONDS = 290  # the API server ends a watch after this; we resume from the last resourceVersion


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


async def json_body(response: Awaitable[Any]) -> dict[str, Any]:
    """The body of a `_preload_content=False` call as a dict (camelCase, as the API server wrote it)."""
    reply = await response
    try:
        text = await reply.text()
        if not 200 <= reply.status < 300:
            raise ApiError(reply.status, text)
        return dict(json.loads(text)) if text else {}
    finally:
        reply.release()


async def _lines(stream: Any) -> AsyncIterator[bytes]:
    """A watch's newline-separated events of any length (aiohttp's readline() refuses lines over 128 KiB)."""
    pending = bytearray()
    async for chunk in stream.iter_any():
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end])
            del pending[:end + 1]
            if line.strip():
                yield line
    if pending.strip():
        yield bytes(pending)


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata", {})
    return metadata.get("namespace", ""), metadata.get("name", "")


class Informer:
    """A list-then-watch cache of one resource kind, resuming from the last resourceVersion and relisting on 410."""

    def __init__(self, kind: str, lister: Callable[..., Awaitable[Any]],
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.kind = kind
        self.lister = lister
        self.on_event = on_event
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                version = await self._relist()
                while version:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: relist after a pause, as client-go does
                log.warning("watch of %s failed (%s); listing again", self.kind, exc)
                await asyncio.sleep(1.0)

    async def _relist(self) -> str:
        listing = await json_body(self.lister(_preload_content=False))
        fresh = {object_key(item): item for item in listing.get("items") or []}
        for gone in self.cache.keys() - fresh.keys():
            self.on_event("DELETED", self.cache.pop(gone))
        for key, item in fresh.items():
            old = self.cache.get(key)
            self.cache[key] = item
            if old is None or old["metadata"].get("resourceVersion") != item["metadata"].get("resourceVersion"):
                self.on_event("ADDED" if old is None else "MODIFIED", item)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> str:
        """Follow one watch; returns the version to resume from, or '' when a relist is needed."""
        reply = await self.lister(watch=True, resource_version=version, allow_watch_bookmarks=True,
                                  timeout_seconds=WATCH_SECONDS, _preload_content=False)
        try:
            if reply.status != 200:
                raise ApiError(reply.status, await reply.text())
            async for line in _lines(reply.content):
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    return ""  # usually 410 Gone: our version is too old
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                if event["type"] == "DELETED":
                    self.cache.pop(object_key(obj), None)
                else:
                    self.cache[object_key(obj)] = obj
                self.on_event(event["type"], obj)
        finally:
            reply.release()
        return version
