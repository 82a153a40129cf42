"""Changes sealed by a hook to pcns: RFC 9180 HPKE, base mode, DHKEM(P-256, HKDF-SHA256) /
HKDF-SHA256 / AES-256-GCM.

A hook (the Windows filter on a DC, ``pcns notify --seal``, the Samba and PAM hooks) seals each
new password to a pcns *hook key*: a P-256 key pair whose private half only pcns holds (wrapped
by the KEK, like the data keys). Nothing on the hook's side can open what it sealed. The context
is bound in HPKE's ``info`` (the public API has no aad): the source, the webhook-id, the user and
the hook key id, so a sealed blob copied into another change, for another user or from another
source, does not open. The encoding is shared with the C side (``windows/README.md``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.errors import IntegrityError, KeyringError

INFO_VERSION = b"pcns-seal-v1"
# A hook key id as pcns makes them (``hpk-<UTC timestamp>-<6 hex>``), loosely: for validation.
KEY_ID_PATTERN = r"^hpk-[A-Za-z0-9-]{1,60}$"
POINT_BYTES = 65  # SEC1 uncompressed: 04 || X || Y
SCALAR_BYTES = 32
ENC_BYTES = POINT_BYTES
TAG_BYTES = 16
_SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def seal_info(*, source: str, webhook_id: str, user: str, key_id: str) -> bytes:
    """The HPKE ``info``: a version tag and four length-prefixed UTF-8 strings."""
    out = bytearray(INFO_VERSION)
    for part in (source, webhook_id, user, key_id):
        raw = part.encode("utf-8")
        out += struct.pack(">I", len(raw)) + raw
    return bytes(out)


@dataclass(frozen=True, slots=True)
class HookPublicKey:
    """What a hook needs to seal: the key id and the recipient's public point."""

    key_id: str
    point: bytes

    def __repr__(self) -> str:
        return f"HookPublicKey({self.key_id!r})"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.point)

    def pem(self) -> str:
        return (
            self.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )


def parse_public_key(key_id: str, text: str) -> HookPublicKey:
    """A PEM SubjectPublicKeyInfo or the 130-hex-digit point, checked to be on P-256.

    :class:`KeyringError` says what is wrong without echoing the input.
    """
    stripped = text.strip()
    try:
        if stripped.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                raise KeyringError("the PEM key is not a P-256 public key")
        else:
            point = bytes.fromhex(stripped)
            if len(point) != POINT_BYTES or point[0] != 4:
                raise KeyringError("the raw key must be 65 bytes (130 hex digits) starting 04")
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, UnicodeEncodeError):
        raise KeyringError("not a PEM P-256 public key nor a 130-hex-digit point") from None
    return HookPublicKey(key_id, _point(key))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    uncompressed = serialization.PublicFormat.UncompressedPoint
    return key.public_bytes(serialization.Encoding.X962, uncompressed)


def seal_for_hook(
    recipient: HookPublicKey, password: str, *, source: str, webhook_id: str, user: str
) -> bytes:
    """``enc || ciphertext || tag``, openable only with the hook key's private half."""
    info = seal_info(source=source, webhook_id=webhook_id, user=user, key_id=recipient.key_id)
    return _SUITE.encrypt(password.encode("utf-8"), recipient.public_key(), info=info)


def new_hook_key_pair() -> tuple[bytes, bytes]:
    """A fresh P-256 pair: (private scalar, 32 bytes; public point, 65 bytes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    scalar = key.private_numbers().private_value.to_bytes(SCALAR_BYTES, "big")
    return scalar, _point(key.public_key())


class HookKeyring:
    """The private halves of the hook keys this process may open with, by key id."""

    def __init__(self) -> None:
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}

    def __repr__(self) -> str:
        return f"HookKeyring(keys={sorted(self._keys)})"

    def install(self, scalars: dict[str, bytes]) -> None:
        """Replace the whole set at once (readers see the old set or the new one)."""
        keys = {}
        for kid, raw in scalars.items():
            if len(raw) != SCALAR_BYTES:
                raise KeyringError(f"hook key {kid!r} is not a P-256 private scalar")
            keys[kid] = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        self._keys = keys

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def has(self, key_id: str) -> bool:
        return key_id in self._keys

    def open(self, key_id: str, sealed: bytes, *, source: str, webhook_id: str, user: str) -> str:
        """The password, or :class:`KeyringError` (unknown key) / :class:`IntegrityError`."""
        key = self._keys.get(key_id)
        if key is None:
            raise KeyringError(f"no hook key {key_id!r}")
        if len(sealed) < ENC_BYTES + TAG_BYTES:
            raise IntegrityError("sealed value is too short")
        info = seal_info(source=source, webhook_id=webhook_id, user=user, key_id=key_id)
        try:
            raw = _SUITE.decrypt(sealed, key, info=info)
        except (InvalidTag, ValueError):
            raise IntegrityError("sealed value failed authentication") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError("opened value is not UTF-8") from None
