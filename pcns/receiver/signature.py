"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

MAX_WEBHOOK_ID = 256


class SignatureRejected(Exception):
    """The request is not provably from a known source; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def sign(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    mac = hmac.new(secret, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float,
    now: float | None = None,
) -> str:
    """Check the signature over the raw body in constant time; returns the webhook id."""
    webhook_id = headers.get("webhook-id", "")
    raw_ts = headers.get("webhook-timestamp", "")
    raw_sigs = headers.get("webhook-signature", "")
    if not webhook_id or not raw_ts or not raw_sigs:
        raise SignatureRejected(
            "missing_headers",
            "webhook-id, webhook-timestamp and webhook-signature headers are required",
        )
    if len(webhook_id) > MAX_WEBHOOK_ID or not webhook_id.isprintable():
        raise SignatureRejected("bad_webhook_id", "webhook-id is too long or not printable")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise SignatureRejected("bad_timestamp", "webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureRejected(
            "stale_timestamp", "webhook-timestamp is outside the accepted tolerance"
        )
    expected = hmac.new(
        secret, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()
    matched = False
    for candidate in raw_sigs.split(" "):
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        # Check every candidate, so the time taken does not reveal which one matched.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureRejected("bad_signature", "no webhook-signature matches")
    return webhook_id
