"""Key lookup behind a small interface, and the local keyring file that backs it today.

:class:`KeyProvider` is what the service uses: the primary key for new ciphertexts and any key by
id for old ones. It can grow into envelope encryption (data keys wrapped by an external
key-encryption key) without changing its callers.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import KeyringError

KEY_BYTES = 32
_FORMAT = 1


class KeyProvider(Protocol):
    def primary(self) -> tuple[str, AESGCM]:
        """The key id and cipher for new ciphertexts."""
        ...

    def get(self, key_id: str) -> AESGCM:
        """The cipher for ``key_id``; :class:`KeyringError` if unknown."""
        ...


def check_private_file(path: Path) -> None:
    """Refuse a key file that group or others can read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyringError(f"keyring file {path} does not exist (run `pcns keys init`)") from None
    except OSError as exc:
        raise KeyringError(f"keyring file {path} cannot be read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(
            f"keyring file {path} has mode {stat.S_IMODE(mode):04o}; "
            "group and others must have no access (chmod 600)"
        )


class FileKeyring:
    """Keys from a JSON keyring file, mode 0600: ``{"format", "primary", "keys": {id: {...}}}``."""

    def __init__(self, primary_id: str, keys: dict[str, bytes]) -> None:
        if primary_id not in keys:
            raise KeyringError(f"keyring: primary key {primary_id!r} is not among its keys")
        self._primary_id = primary_id
        self._ciphers = {kid: AESGCM(raw) for kid, raw in keys.items()}

    def __repr__(self) -> str:
        return f"FileKeyring(primary={self._primary_id!r}, keys={len(self._ciphers)})"

    @classmethod
    def load(cls, path: Path) -> FileKeyring:
        check_private_file(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise KeyringError(f"keyring file {path} is not a readable JSON keyring") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise KeyringError(f"keyring file {path}: unsupported format (expected {_FORMAT})")
        primary = doc.get("primary")
        entries = doc.get("keys")
        if not isinstance(primary, str) or not isinstance(entries, dict) or not entries:
            raise KeyringError(f"keyring file {path}: needs 'primary' and a non-empty 'keys'")
        keys: dict[str, bytes] = {}
        for kid, entry in entries.items():
            try:
                raw = base64.b64decode(entry["key"], validate=True)
            except (KeyError, TypeError, binascii.Error):
                raise KeyringError(f"keyring file {path}: key {kid!r} is malformed") from None
            if len(raw) != KEY_BYTES:
                raise KeyringError(f"keyring file {path}: key {kid!r} is not 256 bits")
            keys[kid] = raw
        return cls(primary, keys)

    @property
    def primary_id(self) -> str:
        return self._primary_id

    def primary(self) -> tuple[str, AESGCM]:
        return self._primary_id, self._ciphers[self._primary_id]

    def get(self, key_id: str) -> AESGCM:
        try:
            return self._ciphers[key_id]
        except KeyError:
            raise KeyringError(f"unknown key id {key_id!r}") from None


def create_keyring_file(path: Path) -> str:
    """Write a new keyring with one random key, mode 0600; refuse to overwrite. Returns its id."""
    key_id = "k" + datetime.now(UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(4)
    doc = {
        "format": _FORMAT,
        "primary": key_id,
        "keys": {
            key_id: {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii"),
            }
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyringError(f"keyring file {path} already exists; not overwriting it") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    return key_id
