"""PostgreSQL's binary COPY tuples of the time-series rows, made once per batch and sent as they are to both databases.

asyncpg encodes the records of a COPY itself, per connection: every row of a bulk batch twice (once per database),
its timestamps through a Python codec call each time, in a buffer that grows a few hundred bytes at a time (each
page a remap, as the server maps blocks of 16 KB and more: opsmgr.allocator). The server instead makes each bulk
item's tuple while it converts the item from the wire (opsmgr.server.convert), where the time is still whole
microseconds, and the writers send the batch's tuples to both databases (opsmgr.db.writer).

The formats are PostgreSQL's send/recv formats of the columns (opsmgr.db.routing.TABLE_COLUMNS): text as UTF-8 (the
client encoding asyncpg sets), timestamptz as microseconds since 2000-01-01 UTC, integers and double precision big
endian, uuid its 16 bytes; each field is its length (int32) and its bytes, each tuple its field count (int16).
"""

from __future__ import annotations

import struct
from uuid import UUID

from opsmgr.db.routing import TABLE_COLUMNS

# The stream's signature, flags and header extension length; and the trailer, a field count of -1.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)

PG_EPOCH_MICROSECONDS = 946_684_800_000_000  # PostgreSQL's epoch, 2000-01-01 UTC, in microseconds since 1970's

# Each a field's length and value, packed in one call (the callers pass the length, a constant).
time_field = struct.Struct(">iq").pack  # (8, microseconds since 2000-01-01 UTC)
float8_field = struct.Struct(">id").pack  # (8, value)
int4_field = struct.Struct(">ii").pack  # (4, value)
int2_field = struct.Struct(">ih").pack  # (2, value)
_INT8_FIELD = struct.Struct(">iq").pack
_UUID_FIELD = struct.Struct(">i16s").pack
_FIELD_COUNT = struct.Struct(">h").pack
_LENGTH = struct.Struct(">i").pack


def key_field(fields: dict[str, bytes], value: str) -> bytes:
    """The field of a key-like text (object key, counter or instance name, channel, source), kept in `fields`: such
    texts repeat from item to item of a batch, so each is encoded once per batch. Callers look in `fields` first
    (`fields.get(value) or key_field(fields, value)`), which costs a fraction of a call."""
    field = fields[value] = text_field(value)
    return field


def text_field(value: str) -> bytes:
    encoded = value.encode()
    return _LENGTH(len(encoded)) + encoded


class TupleParts:
    """What every tuple of one batch shares: the field count and agent first, the epoch and sequence number last."""

    __slots__ = ("event_head", "sample_head", "tail")

    def __init__(self, agent: str, epoch: UUID, seq: int) -> None:
        agent_field = text_field(agent)
        self.event_head = _FIELD_COUNT(len(TABLE_COLUMNS["events"])) + agent_field
        self.sample_head = _FIELD_COUNT(len(TABLE_COLUMNS["performance_samples"])) + agent_field
        self.tail = _UUID_FIELD(16, epoch.bytes) + _INT8_FIELD(8, seq)
