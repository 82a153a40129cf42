"""Errors of the vault; none of their messages ever contains key material or plaintext."""

from __future__ import annotations


class VaultError(Exception):
    """Root of every vault error."""


class KeyringError(VaultError):
    """The keyring cannot be used (missing, unreadable, too permissive, malformed)."""


class IntegrityError(VaultError):
    """A ciphertext failed authentication: tampered, moved to another row, or wrong key."""
