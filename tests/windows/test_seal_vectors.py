"""The C seal (windows/src/seal.c) against RFC 9180 and against pcns' Python side, under Wine 10.

``hpke_vectors.exe`` seals with CNG only; what it produces must be what RFC 9180 says
(the CFRG vectors shipped by ``cryptography-vectors``, and a Python reference of the same
construction on many more inputs), and what pcns' receiver opens (``cryptography``'s HPKE).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import struct
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.windows.conftest import Wine
from vault.hook_seal import seal_info

pytestmark = pytest.mark.e2e

SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
OFF_CURVE = 4  # hpke_vectors.exe's exit code for a refused point


def rfc9180_vectors() -> list[dict]:
    """The RFC 9180 vectors for base mode, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM."""
    with cryptography_vectors.open_vector_file(os.path.join("HPKE", "test-vectors.json"), "r") as f:
        vectors = json.load(f)
    return [
        v
        for v in vectors
        if v["mode"] == 0 and v["kem_id"] == 16 and v["kdf_id"] == 1 and v["aead_id"] == 2
    ]


# A straight transcription of RFC 9180 (sections 4, 4.1, 5.1, 5.2) for this one suite, so the C
# code can be compared on inputs the published vectors do not cover.
def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def reference_seal(sk_e: bytes, pk_r: bytes, info: bytes, aad: bytes, pt: bytes) -> bytes:
    """enc || ct of HPKE base mode, suite (0x0010, 0x0001, 0x0002), with the ephemeral key given."""
    kem_suite = b"KEM\x00\x10"
    hpke_suite = b"HPKE\x00\x10\x00\x01\x00\x02"
    private = ec.derive_private_key(int.from_bytes(sk_e, "big"), ec.SECP256R1())
    enc = _point(private)
    recipient = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pk_r)
    dh = private.exchange(ec.ECDH(), recipient)
    eae_prk = _labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared = _labeled_expand(kem_suite, eae_prk, b"shared_secret", enc + pk_r, 32)
    psk_id_hash = _labeled_extract(hpke_suite, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(hpke_suite, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(hpke_suite, shared, b"secret", b"")
    key = _labeled_expand(hpke_suite, secret, b"key", context, 32)
    nonce = _labeled_expand(hpke_suite, secret, b"base_nonce", context, 12)
    return enc + AESGCM(key).encrypt(nonce, pt, aad)


def _hex(data: bytes) -> str:
    return data.hex() if data else "-"


def write_vectors(path: Path, rows: list[tuple[bytes, ...]]) -> None:
    """hpke_vectors.exe's input: skEm pkEm pkRm info aad pt enc ct, hex, one vector a line."""
    path.write_text("".join(" ".join(_hex(f) for f in row) + "\n" for row in rows))


def _point(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """SEC1 uncompressed: 04 || X || Y."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def test_rfc9180_vectors(windows_build: Path, wine: Wine, tmp_path: Path) -> None:
    """The C seal reproduces enc and ct of every matching RFC 9180 vector byte for byte."""
    vectors = rfc9180_vectors()
    assert vectors, "cryptography-vectors has no base-mode P-256/SHA-256/AES-256-GCM vector"
    rows = []
    for v in vectors:
        first = v["encryptions"][0]
        assert first["nonce"] == v["base_nonce"]  # sequence 0: the one a single seal uses
        rows.append(
            tuple(
                bytes.fromhex(x)
                for x in (
                    v["skEm"],
                    v["pkEm"],
                    v["pkRm"],
                    v["info"],
                    first["aad"],
                    first["pt"],
                    v["enc"],
                    first["ct"],
                )
            )
        )
    listing = tmp_path / "rfc9180.txt"
    write_vectors(listing, rows)
    result = wine.run(
        [windows_build / "tests" / "hpke_vectors.exe", "vectors", wine.to_windows_path(listing)],
        timeout=60,
    )
    assert result.returncode == 0, result
    assert f"passed {len(rows)} of {len(rows)}" in result.stdout


def test_reference_matches_rfc9180() -> None:
    """The Python transcription used below reproduces the RFC 9180 vectors: it is a fair judge."""
    for v in rfc9180_vectors():
        first = v["encryptions"][0]
        got = reference_seal(
            bytes.fromhex(v["skEm"]),
            bytes.fromhex(v["pkRm"]),
            bytes.fromhex(v["info"]),
            bytes.fromhex(first["aad"]),
            bytes.fromhex(first["pt"]),
        )
        assert got == bytes.fromhex(v["enc"]) + bytes.fromhex(first["ct"])


def test_matches_reference_on_many_inputs(windows_build: Path, wine: Wine, tmp_path: Path) -> None:
    """On 40 random keys, infos, aads and plaintexts (empty to 4015 bytes) C and RFC 9180 agree."""
    rng = random.Random(9180)
    lengths = [0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 4015]
    rows = []
    for i in range(40):
        sk_e_key = ec.generate_private_key(ec.SECP256R1())
        sk_e = sk_e_key.private_numbers().private_value.to_bytes(32, "big")
        pk_r = _point(ec.generate_private_key(ec.SECP256R1()))
        info = rng.randbytes(rng.choice([0, 1, 12, 100, 300]))
        aad = rng.randbytes(rng.choice([0, 7, 40]))
        pt = rng.randbytes(lengths[i % len(lengths)])
        sealed = reference_seal(sk_e, pk_r, info, aad, pt)
        rows.append((sk_e, _point(sk_e_key), pk_r, info, aad, pt, sealed[:65], sealed[65:]))
    listing = tmp_path / "reference.txt"
    write_vectors(listing, rows)
    result = wine.run(
        [windows_build / "tests" / "hpke_vectors.exe", "vectors", wine.to_windows_path(listing)],
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    assert f"passed {len(rows)} of {len(rows)}" in result.stdout


def c_info(windows_build: Path, wine: Wine, *parts: str) -> bytes:
    args = [p.encode().hex() or "-" for p in parts]
    result = wine.run([windows_build / "tests" / "hpke_vectors.exe", "info", *args], timeout=60)
    assert result.returncode == 0, result
    return bytes.fromhex(result.stdout.strip())


def c_seal(windows_build: Path, wine: Wine, point: bytes, info: bytes, pt: bytes, out: Path):
    return wine.run(
        [
            windows_build / "tests" / "hpke_vectors.exe",
            "seal",
            point.hex(),
            _hex(info),
            _hex(pt),
            wine.to_windows_path(out),
        ],
        timeout=60,
    )


def test_info_encoding_is_the_receivers(windows_build: Path, wine: Wine) -> None:
    """The C info bytes equal vault.hook_seal.seal_info for the same (Unicode) fields."""
    fields = {
        "source": "dc01",
        "webhook_id": "pcns_" + "0123456789abcdef" * 2,
        "user": "Zoë-李",
        "key_id": "hpk-20261201100000-a1b2c3",
    }
    got = c_info(windows_build, wine, *fields.values())
    assert got == seal_info(**fields)
    assert c_info(windows_build, wine, "", "", "", "") == b"pcns-seal-v1" + b"\x00" * 16


def test_c_seal_opens_in_python_only_with_its_info(
    windows_build: Path, wine: Wine, tmp_path: Path
) -> None:
    """What C seals opens with cryptography's HPKE under the same info, and not under another."""
    key = ec.generate_private_key(ec.SECP256R1())
    info = seal_info(source="dc01", webhook_id="pcns_" + "ab" * 16, user="alice", key_id="hpk-1")
    for password in ["correct horse battery staple", "", "pässwörd 🔑 李"]:
        out = tmp_path / "sealed.bin"
        out.unlink(missing_ok=True)
        result = c_seal(windows_build, wine, _point(key), info, password.encode(), out)
        assert result.returncode == 0, result
        sealed = out.read_bytes()
        assert len(sealed) == 65 + len(password.encode()) + 16
        assert SUITE.decrypt(sealed, key, info=info) == password.encode()
        wrong = seal_info(
            source="dc01", webhook_id="pcns_" + "ab" * 16, user="mallory", key_id="hpk-1"
        )
        with pytest.raises(InvalidTag):
            SUITE.decrypt(sealed, key, info=wrong)
        with pytest.raises(InvalidTag):
            SUITE.decrypt(sealed, ec.generate_private_key(ec.SECP256R1()), info=info)


def test_two_seals_differ(windows_build: Path, wine: Wine, tmp_path: Path) -> None:
    """Each seal uses a fresh ephemeral key: the same password sealed twice looks different."""
    key = ec.generate_private_key(ec.SECP256R1())
    blobs = []
    for name in ("a.bin", "b.bin"):
        assert (
            c_seal(windows_build, wine, _point(key), b"i", b"same", tmp_path / name).returncode == 0
        )
        blobs.append((tmp_path / name).read_bytes())
    assert blobs[0][:65] != blobs[1][:65]
    assert blobs[0][65:] != blobs[1][65:]


P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def small_x_point() -> tuple[int, int]:
    """A point on P-256 with a small x, so that x + p still fits in 32 bytes."""
    for x in range(1, 1000):
        rhs = (x**3 - 3 * x + P256_B) % P256_P
        y = pow(rhs, (P256_P + 1) // 4, P256_P)  # p = 3 mod 4
        if y * y % P256_P == rhs:
            return x, y
    raise AssertionError("no small-x point found")


def _encode(x: int, y: int) -> bytes:
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def off_curve_points() -> dict[str, bytes]:
    """Points a recipient key must not be: off the curve, out of range, or not uncompressed."""
    good = _point(ec.generate_private_key(ec.SECP256R1()))
    x, y = int.from_bytes(good[1:33], "big"), int.from_bytes(good[33:], "big")
    sx, sy = small_x_point()
    return {
        "y with one bit flipped": good[:64] + bytes([good[64] ^ 1]),
        "x + 1": _encode((x + 1) % P256_P, y),
        "x + p (same point mod p, not canonical)": _encode(sx + P256_P, sy),
        "y = p": _encode(sx, P256_P),
        "the origin": _encode(0, 0),
        "compressed prefix": b"\x02" + good[1:],
        "prefix 0x00": b"\x00" + good[1:],
    }


def test_off_curve_recipient_refused(windows_build: Path, wine: Wine, tmp_path: Path) -> None:
    """A recipient key that is not a P-256 point is refused and nothing is sealed to it."""
    exe = windows_build / "tests" / "hpke_vectors.exe"
    good = ec.generate_private_key(ec.SECP256R1())
    assert wine.run([exe, "point", _point(good).hex()], timeout=60).returncode == 0
    numbers = good.public_key().public_numbers()
    x, y = numbers.x, numbers.y
    negated = _encode(x, P256_P - y)
    assert wine.run([exe, "point", negated.hex()], timeout=60).returncode == 0
    assert wine.run([exe, "point", _encode(*small_x_point()).hex()], timeout=60).returncode == 0
    for what, point in off_curve_points().items():
        checked = wine.run([exe, "point", point.hex()], timeout=60)
        assert checked.returncode == OFF_CURVE, what
        out = tmp_path / "sealed.bin"
        sealed = c_seal(windows_build, wine, point, b"info", b"secret", out)
        assert sealed.returncode == OFF_CURVE, (what, sealed)
        assert "not a point on P-256" in sealed.stdout
        assert not out.exists(), what
