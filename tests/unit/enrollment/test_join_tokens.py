"""Join tokens: printed once, stored as a hash, refused clearly when malformed, unknown, expired or used up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsmgr.protocol.enrollment import tokens_secret_name
from opsmgr.server.enrollment_tokens import (
    JoinTokenRecord,
    judge_token,
    mint_token,
    parse_records,
    token_id_of,
    without_expired,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _stored(record: JoinTokenRecord) -> dict[str, JoinTokenRecord]:
    return parse_records({record.token_id: record.to_json().encode()})


def test_a_minted_token_is_accepted_and_only_its_hash_is_stored() -> None:
    minted = mint_token(NOW, timedelta(hours=24), None)
    stored = minted.record.to_json()
    secret = minted.token.split(".")[1]
    assert secret not in stored and minted.token not in stored
    verdict = judge_token(minted.token, _stored(minted.record), "contoso", NOW)
    assert verdict.accepted and verdict.token_id == minted.record.token_id


def test_two_tokens_never_share_an_id_or_secret() -> None:
    tokens = {mint_token(NOW, timedelta(hours=1), 1).token for _ in range(200)}
    assert len(tokens) == 200 and len({t.split(".")[0] for t in tokens}) == 200


@pytest.mark.parametrize("presented", ["", "abc", "abcdefgh.short", "ABCDEFGH." + "a" * 32, "x" * 100])
def test_a_malformed_token_says_what_a_token_looks_like(presented: str) -> None:
    verdict = judge_token(presented, {}, "contoso", NOW)
    assert (verdict.accepted, verdict.reason) == (False, "MalformedToken")
    assert "opsmgr token create" in verdict.message
    assert token_id_of(presented) == ""


def test_a_wrong_secret_reads_like_an_unknown_token() -> None:
    minted = mint_token(NOW, timedelta(hours=1), None)
    forged = f"{minted.record.token_id}.{'a' * 32}"
    wrong = judge_token(forged, _stored(minted.record), "contoso", NOW)
    unknown = judge_token(mint_token(NOW, timedelta(hours=1), None).token, _stored(minted.record), "contoso", NOW)
    assert (wrong.reason, unknown.reason) == ("UnknownToken", "UnknownToken")
    assert "opsmgr token create --group contoso" in wrong.message


def test_an_expired_token_names_its_expiry_and_the_fix() -> None:
    minted = mint_token(NOW, timedelta(hours=1), None)
    verdict = judge_token(minted.token, _stored(minted.record), "contoso", NOW + timedelta(hours=1))
    assert (verdict.accepted, verdict.reason) == (False, "ExpiredToken")
    assert "expired at 2026-11-25T13:00:00+00:00" in verdict.message


def test_a_single_use_token_is_refused_the_second_time() -> None:
    minted = mint_token(NOW, timedelta(hours=1), 1)
    first = judge_token(minted.token, _stored(minted.record), "contoso", NOW)
    assert first.accepted and first.record is not None
    used = first.record.used_once_more()
    second = judge_token(minted.token, _stored(used), "contoso", NOW)
    assert (second.accepted, second.reason) == (False, "TokenUsedUp")
    assert "single-use token and was already used" in second.message


def test_a_token_for_three_uses_allows_three() -> None:
    token = mint_token(NOW, timedelta(hours=1), 3)
    record = token.record
    for _ in range(3):
        verdict = judge_token(token.token, _stored(record), "g", NOW)
        assert verdict.accepted and verdict.record is not None
        record = verdict.record.used_once_more()
    assert judge_token(token.token, _stored(record), "g", NOW).reason == "TokenUsedUp"
    assert record.uses_left() == "0"


@pytest.mark.parametrize(("ttl", "uses", "field"), [(timedelta(seconds=5), None, "--ttl"),
                                                     (timedelta(days=31), None, "--ttl"),
                                                     (timedelta(hours=1), 0, "--uses")])
def test_out_of_range_options_are_refused_naming_the_option(ttl: timedelta, uses: int | None, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        mint_token(NOW, ttl, uses)


def test_records_that_do_not_parse_accept_nothing_and_expired_ones_are_pruned_after_a_day() -> None:
    good = mint_token(NOW - timedelta(days=3), timedelta(hours=1), None).record
    fresh = mint_token(NOW, timedelta(hours=1), None).record
    records = parse_records({"broken": b"{not json", good.token_id: good.to_json().encode(),
                             fresh.token_id: fresh.to_json().encode()})
    assert set(records) == {good.token_id, fresh.token_id}
    assert set(without_expired(records, NOW)) == {fresh.token_id}


def test_the_tokens_secret_name_stays_a_valid_object_name_for_long_groups() -> None:
    assert tokens_secret_name("contoso") == "contoso-join-tokens"
    long = tokens_secret_name("g" * 250)
    assert len(long) <= 253 and long.endswith("-join-tokens")
