"""Sealing passwords: AES-256-GCM bound to the row, and the keyring file's custody rules."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from vault import (
    AssociatedData,
    FileKeyring,
    IntegrityError,
    KeyringError,
    create_keyring_file,
    open_sealed,
    seal,
)

AD = AssociatedData("d-1", "c-1", "wiki", "alice")


@pytest.fixture
def keyring(tmp_path: Path) -> FileKeyring:
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    return FileKeyring.load(path)


def test_round_trip(keyring: FileKeyring) -> None:
    """What is sealed for a row opens for that row, Unicode intact."""
    sealed = seal(keyring, "Пароль-密码-🔑-ß", AD)
    assert sealed.key_id == keyring.primary_id
    assert open_sealed(keyring, sealed, AD) == "Пароль-密码-🔑-ß"


def test_nonces_are_fresh(keyring: FileKeyring) -> None:
    """Sealing the same password twice gives different nonces and ciphertexts."""
    a, b = seal(keyring, "same", AD), seal(keyring, "same", AD)
    assert a.nonce != b.nonce
    assert a.ciphertext != b.ciphertext


@pytest.mark.parametrize(
    "other",
    [
        replace(AD, delivery_id="d-2"),
        replace(AD, change_id="c-2"),
        replace(AD, target="erp"),
        replace(AD, account="bob"),
    ],
)
def test_ciphertext_moved_to_another_row_fails(keyring: FileKeyring, other: AssociatedData) -> None:
    """A ciphertext copied to a row with any other identity does not open."""
    sealed = seal(keyring, "secret", AD)
    with pytest.raises(IntegrityError):
        open_sealed(keyring, sealed, other)


def test_flipped_bit_and_wrong_key_id_fail(keyring: FileKeyring) -> None:
    """Tampering with the ciphertext or relabelling its key id is detected."""
    sealed = seal(keyring, "secret", AD)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(IntegrityError):
        open_sealed(keyring, replace(sealed, ciphertext=flipped), AD)
    with pytest.raises(IntegrityError):
        open_sealed(keyring, replace(sealed, key_id="k-unknown"), AD)


def test_field_boundaries_are_unambiguous() -> None:
    """Identities that concatenate alike still encode differently."""
    a = AssociatedData("d", "c", "ab", "c").encode("k")
    b = AssociatedData("d", "c", "a", "bc").encode("k")
    assert a != b


def test_repr_shows_no_key_or_ciphertext(keyring: FileKeyring) -> None:
    """Neither the keyring nor a sealed value prints its secret bytes."""
    sealed = seal(keyring, "secret", AD)
    assert sealed.ciphertext.hex() not in repr(sealed)
    assert "key" not in repr(keyring).replace("keys=", "")


def test_keyring_refused_when_others_can_read(tmp_path: Path) -> None:
    """A keyring readable by group or others is refused, naming the mode."""
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyringError, match="0640"):
        FileKeyring.load(path)


def test_keyring_init_never_overwrites(tmp_path: Path) -> None:
    """`pcns keys init` twice keeps the first keyring."""
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyringError, match="already exists"):
        create_keyring_file(path)
    assert path.read_bytes() == before
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        json.dumps({"format": 2}),
        json.dumps({"format": 1, "primary": "a", "keys": {"a": {"key": "c2hvcnQ="}}}),
        json.dumps({"format": 1, "primary": "b", "keys": {"a": {"key": "A" * 44}}}),
    ],
)
def test_malformed_keyrings_give_clear_errors(tmp_path: Path, doc: str) -> None:
    """A damaged keyring file stops start-up with a KeyringError, not a traceback."""
    path = tmp_path / "keyring.json"
    path.write_text(doc)
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="keyring"):
        FileKeyring.load(path)
