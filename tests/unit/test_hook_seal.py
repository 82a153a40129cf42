"""The hook seal (RFC 9180 HPKE to a pcns hook key): what it binds, what it refuses."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault import (
    HookKeyring,
    IntegrityError,
    KeyringError,
    new_hook_key_pair,
    parse_public_key,
    seal_for_hook,
    seal_info,
)

CONTEXT = {"source": "dc01", "webhook_id": "pcns_0123", "user": "alice"}


@pytest.fixture
def pair() -> tuple[HookKeyring, str]:
    scalar, point = new_hook_key_pair()
    ring = HookKeyring()
    ring.install({"hpk-1": scalar})
    return ring, point.hex()


def test_info_is_length_prefixed() -> None:
    """Moving a byte from one field to the next gives another info, so no two contexts share
    an encoding; the layout is the one windows/README.md gives the C side."""
    a = seal_info(source="ab", webhook_id="c", user="u", key_id="k")
    b = seal_info(source="a", webhook_id="bc", user="u", key_id="k")
    assert a != b
    assert a == b"pcns-seal-v1\0\0\0\x02ab\0\0\0\x01c\0\0\0\x01u\0\0\0\x01k"


def test_each_bound_field_must_match(pair: tuple[HookKeyring, str]) -> None:
    """A seal opens with its own context only: another source, webhook-id or user fails."""
    ring, point = pair
    key = parse_public_key("hpk-1", point)
    ct = seal_for_hook(key, "Pässwörd-🔑", **CONTEXT)
    assert ring.open("hpk-1", ct, **CONTEXT) == "Pässwörd-🔑"
    for field in CONTEXT:
        with pytest.raises(IntegrityError):
            ring.open("hpk-1", ct, **{**CONTEXT, field: CONTEXT[field] + "x"})
    with pytest.raises(IntegrityError):
        ring.open("hpk-1", ct[:-1] + bytes([ct[-1] ^ 1]), **CONTEXT)
    with pytest.raises(IntegrityError):
        ring.open("hpk-1", ct[:40], **CONTEXT)
    with pytest.raises(KeyringError):
        ring.open("hpk-2", ct, **CONTEXT)


def test_public_key_forms_and_refusals(pair: tuple[HookKeyring, str]) -> None:
    """PEM and raw hex give the same key; an off-curve point, a P-384 key and junk are refused
    without echoing the input."""
    _, point = pair
    raw = parse_public_key("hpk-1", point)
    assert parse_public_key("hpk-1", raw.pem()) == raw
    off_curve = "04" + "11" * 64
    p384 = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    for bad in (off_curve, p384, "zz" * 65, "04" + "00" * 10):
        with pytest.raises(KeyringError) as info:
            parse_public_key("hpk-1", bad)
        assert bad not in str(info.value)


def test_reprs_hold_no_key_material(pair: tuple[HookKeyring, str]) -> None:
    """The keyring and a public key show ids only."""
    ring, point = pair
    assert repr(ring) == "HookKeyring(keys=['hpk-1'])"
    assert point not in repr(parse_public_key("hpk-1", point))
