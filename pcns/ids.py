"""Ids: time-ordered UUIDs (RFC 9562 version 7), so new rows land at the right edge of their
index, and the readable, time-stamped ids of keys."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from datetime import UTC, datetime


def uuid7() -> uuid.UUID:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64 & (0xFFF << 64)
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def new_key_id(prefix: str) -> str:
    """``<prefix>-<UTC YYYYMMDDHHMMSS>-<6 hex>``: data keys (``dek``) and hook keys (``hpk``)."""
    return f"{prefix}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
