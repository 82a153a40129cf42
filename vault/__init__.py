"""Encryption of queued passwords and the custody of their keys; a library.

Envelope encryption: passwords are sealed with data keys (AES-256-GCM), and data keys are stored
only wrapped by a key-encryption key held by a :class:`~vault.kek.KekProvider`. ``vault`` imports
nothing from ``pcns`` or ``targets``.
"""

from vault.aead import AssociatedData, Sealed, open_sealed, reseal, seal
from vault.errors import IntegrityError, KekError, KeyringError, VaultError
from vault.hook_seal import (
    HookKeyring,
    HookPublicKey,
    new_hook_key_pair,
    parse_public_key,
    seal_for_hook,
    seal_info,
)
from vault.kek import KekProvider, WrappedKey
from vault.kek_file import FileKek, add_kek, create_keyring_file, prune_keks
from vault.kek_transit import TransitConfig, TransitKek
from vault.keyring import KEY_BYTES, KeyProvider, Keyring

__all__ = [
    "KEY_BYTES",
    "AssociatedData",
    "FileKek",
    "HookKeyring",
    "HookPublicKey",
    "IntegrityError",
    "KekError",
    "KekProvider",
    "KeyProvider",
    "Keyring",
    "KeyringError",
    "Sealed",
    "TransitConfig",
    "TransitKek",
    "VaultError",
    "WrappedKey",
    "add_kek",
    "create_keyring_file",
    "new_hook_key_pair",
    "open_sealed",
    "parse_public_key",
    "prune_keks",
    "reseal",
    "seal",
    "seal_for_hook",
    "seal_info",
]
