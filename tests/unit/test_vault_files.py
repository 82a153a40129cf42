"""The vault's private files (keyring, transit token, AppRole secret id): owner-only, named in
every refusal, never shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vault import FileKek, KekError, TransitConfig, TransitKek, create_keyring_file
from vault._private_file import read_private_file

CONTENT = "s.tok3n-Value"
URL = "http://127.0.0.1:9"  # never contacted: building the provider only reads its files


def private(tmp_path: Path, text: str, mode: int, name: str = "bao.token") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_owner_only_file_is_read_stripped(tmp_path: Path) -> None:
    """A 0600 file gives back its text without the surrounding whitespace."""
    path = private(tmp_path, CONTENT + "\n", 0o600)
    assert read_private_file(path, label="transit KEK: token file") == CONTENT


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    """Any group or other permission bit refuses the file, naming it and its mode, not content."""
    path = private(tmp_path, CONTENT, mode)
    with pytest.raises(KekError) as info:
        read_private_file(path, label="transit KEK: token file")
    message = str(info.value)
    assert message.startswith(f"transit KEK: token file {path} has mode {mode:04o}")
    assert "chmod 600" in message
    assert CONTENT not in message


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty"), (b" \n\t", "is empty"), (b"\xff\xfe" + CONTENT.encode(), "not UTF-8")],
)
def test_empty_or_binary_file_is_refused(tmp_path: Path, content: bytes, says: str) -> None:
    """An empty, blank or non-UTF-8 file is refused with the file named."""
    path = tmp_path / "bao.token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KekError, match=f"token file {re.escape(str(path))} .*{says}") as info:
        read_private_file(path, label="transit KEK: token file")
    assert CONTENT not in str(info.value)


def test_missing_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    """A missing file (with its hint) and a directory are refused with the file named."""
    absent = tmp_path / "absent"
    with pytest.raises(KekError, match=re.escape(f"{absent} does not exist (run it)") + "$"):
        read_private_file(absent, label="file KEK: keyring file", missing_hint=" (run it)")
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(KekError, match=re.escape(f"{folder} cannot be read")):
        read_private_file(folder, label="file KEK: keyring file")


def test_transit_refuses_a_readable_token_file_at_construction(tmp_path: Path) -> None:
    """A transit token file that group or others can read stops the provider from being built."""
    token = private(tmp_path, CONTENT, 0o644)
    with pytest.raises(KekError) as info:
        TransitKek(TransitConfig(url=URL, token_file=token))
    assert f"transit KEK: token file {token} has mode 0644" in str(info.value)
    assert CONTENT not in str(info.value)


def test_transit_refuses_a_readable_secret_id_file_at_construction(tmp_path: Path) -> None:
    """An AppRole secret id file that group can read stops the provider from being built."""
    secret_id = private(tmp_path, CONTENT, 0o640, name="secret-id")
    config = TransitConfig(url=URL, approle_role_id="role", approle_secret_id_file=secret_id)
    with pytest.raises(KekError) as info:
        TransitKek(config)
    assert f"transit KEK: AppRole secret id file {secret_id} has mode 0640" in str(info.value)
    assert CONTENT not in str(info.value)


async def test_transit_accepts_owner_only_credential_files(tmp_path: Path) -> None:
    """0600 token and secret id files are accepted, and the provider's repr shows neither."""
    token = private(tmp_path, CONTENT, 0o600)
    secret_id = private(tmp_path, CONTENT, 0o600, name="secret-id")
    for config in (
        TransitConfig(url=URL, token_file=token),
        TransitConfig(url=URL, approle_role_id="role", approle_secret_id_file=secret_id),
    ):
        kek = TransitKek(config)
        assert CONTENT not in repr(kek)
        await kek.close()


def test_keyring_file_refusal_names_the_file(tmp_path: Path) -> None:
    """The file KEK goes through the same reader: a world-readable keyring is refused by name."""
    path = tmp_path / "keyring.json"
    create_keyring_file(path)
    path.chmod(0o604)
    with pytest.raises(KekError, match=re.escape(f"file KEK: keyring file {path} has mode 0604")):
        FileKek(path)
    with pytest.raises(KekError, match="does not exist \\(run `pcns keys init`\\)"):
        FileKek(tmp_path / "absent.json")
