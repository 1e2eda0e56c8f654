"""Join tokens for VM enrollment: their format, how they are stored (a hash, never the token) and whether one may
be used now. Pure: the Secret holding the records is read and written by `enrollment_kube`.

A token is `<id>.<secret>`: the id names the record (and may appear in logs and Events), the secret is 160 random
bits that only the person who ran `opsmgr token create` ever sees. The Secret `<group>-join-tokens` keeps, per
id, the SHA-256 of the secret, the expiry and the use count; a high-entropy secret needs no slow hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

TOKEN_PATTERN = re.compile(r"^([a-z2-7]{8})\.([a-z2-7]{32})$")
MAX_TTL = timedelta(days=30)  # a join token is a short-lived bootstrap secret, not a credential to keep
TOKENS_SECRET_TYPE = "opsmgr.io/join-tokens"  # noqa: S105 (a Secret type, not a secret)


def _random_base32(size: int) -> str:
    return base64.b32encode(secrets.token_bytes(size)).decode().lower().rstrip("=")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class JoinTokenRecord:
    """What the Secret keeps about one token: never the secret itself."""

    token_id: str
    sha256: str
    created: datetime
    expires: datetime
    uses_allowed: int | None  # None: any number of uses until it expires
    uses: int = 0
    description: str = ""

    def to_json(self) -> str:
        return json.dumps({"sha256": self.sha256, "created": self.created.isoformat(),
                           "expires": self.expires.isoformat(), "usesAllowed": self.uses_allowed,
                           "uses": self.uses, "description": self.description}, sort_keys=True)

    @classmethod
    def from_json(cls, token_id: str, text: str | bytes) -> JoinTokenRecord:
        document = json.loads(text)
        return cls(token_id=token_id, sha256=str(document["sha256"]),
                   created=datetime.fromisoformat(document["created"]),
                   expires=datetime.fromisoformat(document["expires"]),
                   uses_allowed=None if document.get("usesAllowed") is None else int(document["usesAllowed"]),
                   uses=int(document.get("uses", 0)), description=str(document.get("description", "")))

    def used_once_more(self) -> JoinTokenRecord:
        return replace(self, uses=self.uses + 1)

    def uses_left(self) -> str:
        return "unlimited" if self.uses_allowed is None else str(max(self.uses_allowed - self.uses, 0))


@dataclass(frozen=True)
class NewToken:
    """A token just minted: `token` is shown once, `record` is what gets stored."""

    token: str
    record: JoinTokenRecord


def mint_token(now: datetime, ttl: timedelta, uses_allowed: int | None, description: str = "") -> NewToken:
    """A fresh token and its record; raises ValueError naming the option when ttl or uses are out of range."""
    if not timedelta(minutes=1) <= ttl <= MAX_TTL:
        raise ValueError(f"--ttl = {ttl}: must be between 1m and {int(MAX_TTL.total_seconds() // 3600)}h. "
                         "Fix: give a duration such as 24h")
    if uses_allowed is not None and uses_allowed < 1:
        raise ValueError(f"--uses = {uses_allowed}: must be at least 1. Fix: give --uses 1 (or --single-use)")
    token_id, secret = _random_base32(5), _random_base32(20)
    record = JoinTokenRecord(token_id, _digest(secret), now, now + ttl, uses_allowed, 0, description)
    return NewToken(f"{token_id}.{secret}", record)


@dataclass(frozen=True)
class TokenVerdict:
    """Whether a presented token may be used now; `record` is the stored record (for the use count)."""

    accepted: bool
    reason: str
    message: str
    token_id: str = ""
    record: JoinTokenRecord | None = None


def token_id_of(presented: str) -> str:
    """The id part of a presented token, or "" when it is malformed (safe to log: it is not the secret)."""
    match = TOKEN_PATTERN.match(presented.strip()) if isinstance(presented, str) else None
    return match.group(1) if match else ""


def judge_token(presented: str, records: Mapping[str, JoinTokenRecord], group: str, now: datetime) -> TokenVerdict:
    """Accept a token that exists, matches its hash, has not expired and has uses left."""
    match = TOKEN_PATTERN.match(presented.strip()) if isinstance(presented, str) else None
    if match is None:
        return TokenVerdict(False, "MalformedToken",
                            "--token is not a join token (<8 characters>.<32 characters>). Fix: copy the whole "
                            "token `opsmgr token create` printed")
    token_id, secret = match.groups()
    record = records.get(token_id)
    # An unknown id and a wrong secret get the same answer, so probing reveals nothing about which ids exist.
    if record is None or not hmac.compare_digest(record.sha256, _digest(secret)):
        return TokenVerdict(False, "UnknownToken",
                            f"join token {token_id} is not a token of management group {group} (or it was deleted). "
                            "Fix: create one with `opsmgr token create --group " + group + "`", token_id)
    if now >= record.expires:
        return TokenVerdict(False, "ExpiredToken",
                            f"join token {token_id} expired at {record.expires.isoformat()}. Fix: create a new one "
                            f"with `opsmgr token create --group {group}`", token_id, record)
    if record.uses_allowed is not None and record.uses >= record.uses_allowed:
        kind = "single-use token" if record.uses_allowed == 1 else f"token for {record.uses_allowed} uses"
        return TokenVerdict(False, "TokenUsedUp",
                            f"join token {token_id} is a {kind} and was already used. Fix: create a new one with "
                            f"`opsmgr token create --group {group}`", token_id, record)
    return TokenVerdict(True, "TokenAccepted", f"join token {token_id} accepted", token_id, record)


def parse_records(data: Mapping[str, bytes]) -> dict[str, JoinTokenRecord]:
    """The records of a decoded tokens Secret; entries that do not parse are skipped (they accept nothing)."""
    records = {}
    for token_id, text in data.items():
        try:
            records[token_id] = JoinTokenRecord.from_json(token_id, text)
        except (ValueError, KeyError, TypeError):
            continue
    return records


def without_expired(records: Mapping[str, JoinTokenRecord], now: datetime,
                    keep: timedelta = timedelta(days=1)) -> dict[str, JoinTokenRecord]:
    """Records still worth keeping: expired ones linger a day so a late enroll still hears 'expired'."""
    return {token_id: record for token_id, record in records.items() if now < record.expires + keep}
