"""The ``file`` KEK provider: key-encryption keys in a local JSON file, mode 0600.

The file holds one or more KEKs, one of them primary: ``pcns keys rotate-kek`` adds a new primary,
rewraps every data key under it, then drops the old KEKs. Processes re-read the file when they
meet a KEK id they do not hold, so a rotation needs no restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault._private_file import read_private_file
from vault.errors import KekError
from vault.kek import WrappedKey, wrap_context

KEY_BYTES = 32
NONCE_BYTES = 12
_FORMAT = 1


def _read(path: Path) -> tuple[str, dict[str, bytes]]:
    text = read_private_file(
        path, label="file KEK: keyring file", missing_hint=" (run `pcns keys init`)"
    )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise KekError(f"file KEK: {path} is not a readable JSON keyring") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise KekError(f"file KEK: {path} has an unsupported format (expected {_FORMAT})")
    primary, entries = doc.get("primary"), doc.get("keys")
    if not isinstance(primary, str) or not isinstance(entries, dict) or primary not in entries:
        raise KekError(f"file KEK: {path} needs 'primary' naming one of its 'keys'")
    keys: dict[str, bytes] = {}
    for kid, entry in entries.items():
        try:
            raw = base64.b64decode(entry["key"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise KekError(f"file KEK: {path}: key {kid!r} is malformed") from None
        if len(raw) != KEY_BYTES:
            raise KekError(f"file KEK: {path}: key {kid!r} is not 256 bits")
        keys[kid] = raw
    return primary, keys


def _write(path: Path, primary: str, keys: dict[str, bytes], *, exclusive: bool) -> None:
    doc: dict[str, Any] = {
        "format": _FORMAT,
        "purpose": "pcns key-encryption keys",
        "primary": primary,
        "keys": {
            kid: {"key": base64.b64encode(raw).decode("ascii"), "fingerprint": fingerprint(raw)}
            for kid, raw in keys.items()
        },
    }
    text = json.dumps(doc, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KekError(f"file KEK: {path} already exists; not overwriting it") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fingerprint(raw: bytes) -> str:
    """A public identifier of a key (not the key): first 16 hex digits of its SHA-256."""
    return hashlib.sha256(b"pcns-kek-fingerprint" + raw).hexdigest()[:16]


def _new_id() -> str:
    return "kek-" + datetime.now(UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(4)


def create_keyring_file(path: Path) -> str:
    """Write a new KEK file with one random KEK, mode 0600; refuse to overwrite. Returns its id."""
    kid = _new_id()
    _write(path, kid, {kid: secrets.token_bytes(KEY_BYTES)}, exclusive=True)
    return kid


def add_kek(path: Path) -> str:
    """Add a new primary KEK to the file (the old ones stay until :func:`prune_keks`)."""
    _, keys = _read(path)
    kid = _new_id()
    keys[kid] = secrets.token_bytes(KEY_BYTES)
    _write(path, kid, keys, exclusive=False)
    return kid


def prune_keks(path: Path) -> list[str]:
    """Drop every KEK but the primary; returns the ids dropped."""
    primary, keys = _read(path)
    dropped = sorted(k for k in keys if k != primary)
    _write(path, primary, {primary: keys[primary]}, exclusive=False)
    return dropped


class FileKek:
    """Wraps data keys with AES-256-GCM under the file's primary KEK."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._primary, self._keys = _read(path)

    def __repr__(self) -> str:
        return f"FileKek(path={str(self._path)!r}, primary={self._primary!r})"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def primary_id(self) -> str:
        return self._primary

    def _kek(self, kek_id: str) -> bytes:
        if kek_id not in self._keys:
            self._primary, self._keys = _read(self._path)  # rotated by another process?
        try:
            return self._keys[kek_id]
        except KeyError:
            raise KekError(
                f"file KEK: {self._path} does not hold key-encryption key {kek_id!r} "
                "(wrong or lost keyring file)"
            ) from None

    async def wrap(self, dek_id: str, key: bytes) -> WrappedKey:
        nonce = os.urandom(NONCE_BYTES)
        kek_id = self._primary
        aad = wrap_context(dek_id) + kek_id.encode()
        blob = nonce + AESGCM(self._kek(kek_id)).encrypt(nonce, key, aad)
        return WrappedKey(kek_ref=kek_id, blob=blob)

    async def unwrap(self, dek_id: str, wrapped: WrappedKey) -> bytes:
        kek = self._kek(wrapped.kek_ref)
        aad = wrap_context(dek_id) + wrapped.kek_ref.encode()
        try:
            return AESGCM(kek).decrypt(wrapped.blob[:NONCE_BYTES], wrapped.blob[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise KekError(
                f"file KEK: data key {dek_id!r} does not unwrap with key-encryption key "
                f"{wrapped.kek_ref!r} from {self._path} (wrong keyring file, or tampered)"
            ) from None

    async def rewrap(self, dek_id: str, wrapped: WrappedKey) -> WrappedKey:
        key = await self.unwrap(dek_id, wrapped)
        return await self.wrap(dek_id, key)

    async def is_current(self, wrapped: WrappedKey) -> bool:
        self._primary, self._keys = _read(self._path)
        return wrapped.kek_ref == self._primary

    async def close(self) -> None:
        self._keys = {}
