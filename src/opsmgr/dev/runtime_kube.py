"""The local runtime's thin API layer: plain-dict calls and list-then-watch caches over kubernetes_asyncio.

The list-then-watch cache and the reply decoding are shared with the management server (`opsmgr.kubeio`).
"""

from __future__ import annotations

import datetime as dt

from opsmgr.kubeio.informer import WATCH_SECONDS, ApiError, Informer, json_body, object_key

__all__ = ["WATCH_SECONDS", "ApiError", "Informer", "api_time", "json_body", "object_key"]


def api_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
