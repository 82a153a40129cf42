"""AES-256-GCM sealing of one password, bound to the row that holds it.

The associated data is a canonical, versioned encoding of the row's identity and the key id, so a
ciphertext copied to another row, or relabelled with another key id, fails to open.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from vault.errors import IntegrityError, KeyringError
from vault.keyring import KeyProvider

_AD_VERSION = b"pcns-ad-v1"
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class AssociatedData:
    """The identity of the row a ciphertext belongs to."""

    delivery_id: str
    change_id: str
    target: str
    account: str

    def encode(self, key_id: str) -> bytes:
        """Length-prefixed fields, so no two identities share an encoding."""
        out = bytearray(_AD_VERSION)
        for field in (self.delivery_id, self.change_id, self.target, self.account, key_id):
            raw = field.encode("utf-8")
            out += struct.pack(">I", len(raw)) + raw
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A ciphertext with what is needed to open it (apart from the key and the row identity)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"Sealed(key_id={self.key_id!r}, {len(self.ciphertext)} bytes)"


def seal(keys: KeyProvider, plaintext: str, ad: AssociatedData) -> Sealed:
    """Encrypt under the primary key with a fresh random 96-bit nonce."""
    key_id, aead = keys.primary()
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = aead.encrypt(nonce, plaintext.encode("utf-8"), ad.encode(key_id))
    return Sealed(key_id=key_id, nonce=nonce, ciphertext=ciphertext)


def open_sealed(keys: KeyProvider, sealed: Sealed, ad: AssociatedData) -> str:
    """Decrypt, or raise :class:`IntegrityError` when the ciphertext does not belong here."""
    try:
        aead = keys.get(sealed.key_id)
    except KeyringError as exc:
        raise IntegrityError(f"no key with id {sealed.key_id!r}") from exc
    if len(sealed.nonce) != NONCE_BYTES:
        raise IntegrityError("malformed nonce")
    try:
        raw = aead.decrypt(sealed.nonce, sealed.ciphertext, ad.encode(sealed.key_id))
    except InvalidTag:
        raise IntegrityError("ciphertext failed authentication") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError("decrypted value is not UTF-8") from None


def reseal(keys: KeyProvider, sealed: Sealed, ad: AssociatedData) -> Sealed:
    """Re-encrypt under the primary key; the plaintext never leaves this function."""
    return seal(keys, open_sealed(keys, sealed, ad), ad)
