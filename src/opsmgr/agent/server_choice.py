"""Moved to `opsmgr.protocol.server_choice`, which the gateway shares; kept so existing imports still work."""

from opsmgr.protocol.server_choice import (
    DEFAULT_FAILBACK_SECONDS,
    DEFAULT_PRIMARY_ATTEMPTS,
    BackoffPolicy,
    NextAttempt,
    ServerChoice,
)

__all__ = ["DEFAULT_FAILBACK_SECONDS", "DEFAULT_PRIMARY_ATTEMPTS", "BackoffPolicy", "NextAttempt", "ServerChoice"]
