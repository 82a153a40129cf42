"""Sealing passwords: AES-256-GCM bound to the row, and the keyring file's custody rules."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from vault import (
    AssociatedData,
    FileKek,
    IntegrityError,
    KekError,
    Keyring,
    add_kek,
    create_keyring_file,
    open_sealed,
    prune_keks,
    reseal,
    seal,
)

AD = AssociatedData("d-1", "c-1", "wiki", "alice")


@pytest.fixture
def keyring() -> Keyring:
    ring = Keyring()
    ring.install({"dek-a": os.urandom(32), "dek-b": os.urandom(32)}, "dek-a")
    return ring


def test_round_trip(keyring: Keyring) -> None:
    """What is sealed for a row opens for that row, Unicode intact."""
    sealed = seal(keyring, "Пароль-密码-🔑-ß", AD)
    assert sealed.key_id == keyring.primary_id
    assert open_sealed(keyring, sealed, AD) == "Пароль-密码-🔑-ß"


def test_nonces_are_fresh(keyring: Keyring) -> None:
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
def test_ciphertext_moved_to_another_row_fails(keyring: Keyring, other: AssociatedData) -> None:
    """A ciphertext copied to a row with any other identity does not open."""
    sealed = seal(keyring, "secret", AD)
    with pytest.raises(IntegrityError):
        open_sealed(keyring, sealed, other)


def test_flipped_bit_and_wrong_key_id_fail(keyring: Keyring) -> None:
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


def test_repr_shows_no_key_or_ciphertext(keyring: Keyring) -> None:
    """Neither the keyring nor a sealed value prints its secret bytes."""
    sealed = seal(keyring, "secret", AD)
    assert sealed.ciphertext.hex() not in repr(sealed)
    assert repr(keyring) == "Keyring(primary='dek-a', keys=['dek-a', 'dek-b'])"


def test_wrong_key_bytes_open_nothing(keyring: Keyring) -> None:
    """A ciphertext under a key id whose bytes differ (a lost or replaced key) does not open."""
    sealed = seal(keyring, "secret", AD)
    keyring.install({"dek-a": os.urandom(32)}, "dek-a")
    with pytest.raises(IntegrityError):
        open_sealed(keyring, sealed, AD)


def test_reseal_round_trip() -> None:
    """A ciphertext under an old key, resealed, is under the primary and still opens."""
    ring = Keyring()
    old, new = os.urandom(32), os.urandom(32)
    ring.install({"old": old}, "old")
    sealed = seal(ring, "Пароль", AD)
    ring.install({"old": old, "new": new}, "new")
    moved = reseal(ring, sealed, AD)
    assert moved.key_id == "new"
    assert open_sealed(ring, moved, AD) == "Пароль"


def test_encryptions_are_counted_per_key(keyring: Keyring) -> None:
    """Each seal counts against its key, for the automatic-rotation cap."""
    for _ in range(3):
        seal(keyring, "x", AD)
    assert keyring.take_counts() == {"dek-a": 3}
    assert keyring.take_counts() == {}


def test_kek_file_refused_when_others_can_read(tmp_path: Path) -> None:
    """A KEK file readable by group or others is refused, naming the mode and the provider."""
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(KekError, match=r"file KEK.*0640"):
        FileKek(path)


def test_kek_init_never_overwrites(tmp_path: Path) -> None:
    """`pcns keys init` twice keeps the first KEK file, mode 0600."""
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    before = path.read_bytes()
    with pytest.raises(KekError, match="already exists"):
        create_keyring_file(path)
    assert path.read_bytes() == before
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_wrapped_key_is_bound_to_its_id(tmp_path: Path) -> None:
    """A data key wrapped for one id does not unwrap as another id or under another KEK file."""
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    kek = FileKek(path)
    raw = os.urandom(32)
    wrapped = await kek.wrap("dek-1", raw)
    assert raw not in wrapped.blob
    assert await kek.unwrap("dek-1", wrapped) == raw
    with pytest.raises(KekError, match="does not unwrap"):
        await kek.unwrap("dek-2", wrapped)
    other = tmp_path / "other.json"
    create_keyring_file(other)
    with pytest.raises(KekError, match="does not hold"):
        await FileKek(other).unwrap("dek-1", wrapped)


async def test_kek_rotation_in_the_file(tmp_path: Path) -> None:
    """add_kek makes a new primary KEK; rewrapped keys survive pruning the old one."""
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    kek = FileKek(path)
    raw = os.urandom(32)
    wrapped = await kek.wrap("dek-1", raw)
    add_kek(path)
    assert not await kek.is_current(wrapped)
    moved = await kek.rewrap("dek-1", wrapped)
    assert await kek.is_current(moved)
    assert prune_keks(path) == [wrapped.kek_ref]
    fresh = FileKek(path)
    assert await fresh.unwrap("dek-1", moved) == raw
    with pytest.raises(KekError):
        await fresh.unwrap("dek-1", wrapped)


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        json.dumps({"format": 2}),
        json.dumps({"format": 1, "primary": "a", "keys": {"a": {"key": "c2hvcnQ="}}}),
        json.dumps({"format": 1, "primary": "b", "keys": {"a": {"key": "A" * 44}}}),
    ],
)
def test_malformed_kek_files_give_clear_errors(tmp_path: Path, doc: str) -> None:
    """A damaged KEK file stops start-up with a KekError naming the provider, not a traceback."""
    path = tmp_path / "keyring.json"
    path.write_text(doc)
    os.chmod(path, 0o600)
    with pytest.raises(KekError, match="file KEK"):
        FileKek(path)
