"""Who is asking: a bearer token from the Authorization header or the session cookie, checked by TokenReview; and
the CSRF token every write must carry.

The session is the token itself, in an HttpOnly, Secure, SameSite=Strict cookie: nothing about a person is kept
on the server, and a token that expires or is revoked ends the session at the next review. Reviews are cached a
few seconds by the token's hash, so a page's burst of requests costs one review. The CSRF token is an HMAC of the
session token's hash under a key minted at start, so it is tied to the session, and a page served before a restart
asks the person to reload.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

from opsmgr.console.cluster import Review

SESSION_COOKIE = "opsmgr_session"
LOGIN_CSRF_COOKIE = "opsmgr_login"
REVIEW_CACHE_SECONDS = 10.0
REVIEW_CACHE_SIZE = 1024
MAX_TOKEN_LENGTH = 16 * 1024


def bearer_token(headers: Mapping[str, str], cookies: Mapping[str, str]) -> tuple[str | None, bool]:
    """The presented token and whether it came from the cookie (a browser session) rather than the header."""
    header = headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    cookie = cookies.get(SESSION_COOKIE, "").strip()
    return (cookie, True) if cookie else (None, False)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CsrfTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or secrets.token_bytes(32)

    def issue(self, session_token: str) -> str:
        return hmac.new(self.key, token_hash(session_token), hashlib.sha256).hexdigest()

    def valid(self, session_token: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.issue(session_token), str(presented))


class Authenticator:
    """TokenReview with a short cache; `review` is the cluster's."""

    def __init__(self, review: Callable[[str], Awaitable[Review]], *, ttl: float = REVIEW_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._review = review
        self._ttl = ttl
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Review]] = OrderedDict()

    async def authenticate(self, token: str) -> Review:
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
            return Review(False, None, "the token is not a bearer token")
        key = token_hash(token)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        review = await self._review(token)
        self._cache[key] = (now, review)
        self._cache.move_to_end(key)
        while len(self._cache) > REVIEW_CACHE_SIZE:
            self._cache.popitem(last=False)
        return review
