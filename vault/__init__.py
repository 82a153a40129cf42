"""Encryption of queued passwords and the custody of their keys; a library.

``vault`` imports nothing from ``pcns`` or ``targets``.
"""

from vault.aead import AssociatedData, Sealed, open_sealed, seal
from vault.errors import IntegrityError, KeyringError, VaultError
from vault.keyring import FileKeyring, KeyProvider, create_keyring_file

__all__ = [
    "AssociatedData",
    "FileKeyring",
    "IntegrityError",
    "KeyProvider",
    "KeyringError",
    "Sealed",
    "VaultError",
    "create_keyring_file",
    "open_sealed",
    "seal",
]
