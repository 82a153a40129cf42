"""The data-encryption keys a process holds in memory, behind a small lookup interface.

:class:`KeyProvider` is what sealing and opening use: the primary key for new ciphertexts and any
key by id for old ones. :class:`Keyring` is the in-memory set; the service fills it with data
keys unwrapped by a key-encryption key (see :mod:`vault.kek`) and swaps it on rotation.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import KeyringError

KEY_BYTES = 32


class KeyProvider(Protocol):
    def primary(self) -> tuple[str, AESGCM]:
        """The key id and cipher for one new ciphertext."""
        ...

    def get(self, key_id: str) -> AESGCM:
        """The cipher for ``key_id``; :class:`KeyringError` if unknown."""
        ...


class Keyring:
    """Data keys by id, one of them primary; counts the encryptions made under each."""

    def __init__(self) -> None:
        self._ciphers: dict[str, AESGCM] = {}
        self._primary: str | None = None
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Keyring(primary={self._primary!r}, keys={sorted(self._ciphers)})"

    def install(self, keys: dict[str, bytes], primary: str | None) -> None:
        """Replace the whole set at once (readers see the old set or the new one)."""
        if primary is not None and primary not in keys:
            raise KeyringError(f"primary key {primary!r} is not among the keys")
        for kid, raw in keys.items():
            if len(raw) != KEY_BYTES:
                raise KeyringError(f"key {kid!r} is not 256 bits")
        ciphers = {kid: AESGCM(raw) for kid, raw in keys.items()}
        self._ciphers, self._primary = ciphers, primary

    @property
    def primary_id(self) -> str | None:
        return self._primary

    def has(self, key_id: str) -> bool:
        return key_id in self._ciphers

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._ciphers)

    def primary(self) -> tuple[str, AESGCM]:
        kid = self._primary
        if kid is None:
            raise KeyringError("no primary data key is loaded")
        with self._lock:
            self._counts[kid] += 1
        return kid, self._ciphers[kid]

    def get(self, key_id: str) -> AESGCM:
        try:
            return self._ciphers[key_id]
        except KeyError:
            raise KeyringError(f"unknown key id {key_id!r}") from None

    def take_counts(self) -> dict[str, int]:
        """Encryptions per key since the last call (for the durable per-key counter)."""
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
        return counts

    def restore_counts(self, counts: dict[str, int]) -> None:
        """Give back counts that could not be recorded, so the next flush includes them."""
        with self._lock:
            self._counts.update(counts)
