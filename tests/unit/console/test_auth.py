"""Bearer tokens, the review cache and CSRF tokens tied to the session."""

from __future__ import annotations

from opsmgr.console.auth import SESSION_COOKIE, Authenticator, CsrfTokens, bearer_token
from opsmgr.console.cluster import Review, User


def test_the_header_wins_over_the_cookie_and_says_where_the_token_came_from() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}, {SESSION_COOKIE: "xyz"}) == ("abc", False)
    assert bearer_token({}, {SESSION_COOKIE: "xyz"}) == ("xyz", True)
    assert bearer_token({"Authorization": "Basic Zm9v"}, {}) == (None, False)


def test_csrf_token_is_tied_to_the_session_and_the_process_key() -> None:
    tokens = CsrfTokens(b"k" * 32)
    issued = tokens.issue("session-a")
    assert tokens.valid("session-a", issued)
    assert not tokens.valid("session-b", issued)
    assert not tokens.valid("session-a", None)
    assert not tokens.valid("session-a", "")
    assert not CsrfTokens(b"j" * 32).valid("session-a", issued)


async def test_reviews_are_cached_briefly_by_token() -> None:
    asked: list[str] = []
    moment = [0.0]

    async def review(token: str) -> Review:
        asked.append(token)
        return Review(True, User("alice"), "")

    authenticator = Authenticator(review, ttl=10, clock=lambda: moment[0])
    await authenticator.authenticate("t1")
    await authenticator.authenticate("t1")
    assert asked == ["t1"]
    moment[0] = 11
    await authenticator.authenticate("t1")
    assert asked == ["t1", "t1"]


async def test_a_token_that_is_no_bearer_token_is_refused_without_asking() -> None:
    async def review(token: str) -> Review:
        raise AssertionError("asked")

    authenticator = Authenticator(review)
    assert not (await authenticator.authenticate("a\nb")).authenticated
    assert not (await authenticator.authenticate("x" * 20000)).authenticated
