"""Errors of the vault; none of their messages ever contains key material or plaintext."""

from __future__ import annotations


class VaultError(Exception):
    """Root of every vault error."""


class KeyringError(VaultError):
    """A key cannot be used (missing, unknown id, malformed)."""


class KekError(VaultError):
    """The key-encryption key is unavailable or wrong; the message names the provider."""


class IntegrityError(VaultError):
    """A ciphertext failed authentication: tampered, moved to another row, or wrong key."""
