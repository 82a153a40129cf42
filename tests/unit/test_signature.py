"""Standard Webhooks signing and verification, checked against the reference library."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from pcns.receiver.signature import SignatureRejected, sign, verify
from pcns.secret_files import decode_webhook_secret, new_webhook_secret

BODY = b'{"user":"alice","password":"x"}'


def _headers(secret: str, *, wid: str = "msg_1", ts: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    sig = Webhook(secret).sign(wid, datetime.fromtimestamp(stamp, UTC), BODY.decode())
    return {"webhook-id": wid, "webhook-timestamp": str(stamp), "webhook-signature": sig}


def test_reference_library_signature_verifies() -> None:
    """A signature made by the standardwebhooks package is accepted."""
    secret = new_webhook_secret()
    key = decode_webhook_secret(secret, what="secret")
    assert verify(key, _headers(secret), BODY, tolerance=300) == "msg_1"


def test_our_signature_verifies_with_reference_library() -> None:
    """What `pcns notify` signs, the standardwebhooks package verifies."""
    secret = new_webhook_secret()
    key = decode_webhook_secret(secret, what="secret")
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(key, "msg_2", ts, BODY),
    }
    assert Webhook(secret).verify(BODY, headers) == {"user": "alice", "password": "x"}


def test_one_matching_signature_among_several_is_enough() -> None:
    """During secret rotation a sender may send several signatures; one match suffices."""
    secret = new_webhook_secret()
    key = decode_webhook_secret(secret, what="secret")
    headers = _headers(secret)
    headers["webhook-signature"] = "v1,AAAA v2,zzz " + headers["webhook-signature"]
    assert verify(key, headers, BODY, tolerance=300) == "msg_1"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), "bad_signature"),
        (lambda h, b: (h, b + b" "), "bad_signature"),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "bad_signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing_headers"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "bad_timestamp"),
        (lambda h, b: ({**h, "webhook-signature": "v1,not base64!"}, b), "bad_signature"),
    ],
)
def test_tampered_requests_are_rejected(mutate: object, reason: str) -> None:
    """Any change to the body, id or signature, or a missing header, is refused with a reason."""
    secret = new_webhook_secret()
    key = decode_webhook_secret(secret, what="secret")
    headers, body = mutate(_headers(secret), BODY)  # type: ignore[operator]
    with pytest.raises(SignatureRejected) as info:
        verify(key, headers, body, tolerance=300)
    assert info.value.reason == reason


@pytest.mark.parametrize("skew", [-301, 301, -86400])
def test_stale_or_future_timestamps_are_rejected(skew: int) -> None:
    """A correctly signed request outside the 5-minute window is a replay candidate: refused."""
    secret = new_webhook_secret()
    key = decode_webhook_secret(secret, what="secret")
    headers = _headers(secret, ts=int(time.time()) + skew)
    with pytest.raises(SignatureRejected) as info:
        verify(key, headers, BODY, tolerance=300)
    assert info.value.reason == "stale_timestamp"


def test_wrong_secret_is_rejected() -> None:
    """A request signed with another source's secret does not verify."""
    key = decode_webhook_secret(new_webhook_secret(), what="secret")
    with pytest.raises(SignatureRejected):
        verify(key, _headers(new_webhook_secret()), BODY, tolerance=300)
