"""Target credential files (tokens, bind passwords, DSNs): read the one line, refuse a file that
group or others may read, and never show the content in an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from targets.base import read_secret_file
from targets.http import HttpSettings
from targets.sql import SqlSettings

CONTENT = "s3cret-Value"


def secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "cred"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_one_line_is_read_without_its_line_break(tmp_path: Path) -> None:
    """The file's single line comes back without the trailing newline."""
    assert read_secret_file(secret(tmp_path, CONTENT + "\n"), what="token_file") == CONTENT


@pytest.mark.parametrize(
    ("text", "mode", "says"),
    [
        (CONTENT, 0o644, "mode 0644; group and others must have no access (chmod 600)"),
        (CONTENT, 0o640, "mode 0640"),
        ("", 0o600, "is empty"),
        (CONTENT + "\nsecond line", 0o600, "must hold one line"),
    ],
)
def test_bad_files_are_refused_naming_the_key(
    tmp_path: Path, text: str, mode: int, says: str
) -> None:
    """Readable by others, empty or several lines: refused with the key and file named and the
    content not shown."""
    with pytest.raises(ValueError, match="token_file") as info:
        read_secret_file(secret(tmp_path, text, mode), what="token_file")
    assert says in str(info.value)
    assert CONTENT not in str(info.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A file that does not exist is named in the error."""
    with pytest.raises(ValueError, match="dsn_file: cannot read"):
        read_secret_file(tmp_path / "absent", what="dsn_file")


def test_adapter_config_refuses_a_world_readable_credential(tmp_path: Path) -> None:
    """An adapter's settings refuse a credential file others can read, at load, naming the key."""
    path = secret(tmp_path, "postgresql://app:" + CONTENT + "@127.0.0.1/app", 0o644)
    with pytest.raises(ValidationError) as sql:
        SqlSettings.model_validate(
            {"dsn_file": path, "query": "UPDATE u SET pw = :hash WHERE login = :account"}
        )
    assert "dsn_file" in str(sql.value)
    assert "chmod 600" in str(sql.value)
    assert CONTENT not in str(sql.value)
    with pytest.raises(ValidationError) as http:
        HttpSettings.model_validate(
            {
                "url": "https://app.example/users/{account}",
                "body": {"password": "{password}"},
                "bearer_token_file": path,
            }
        )
    assert "bearer_token_file" in str(http.value)
    assert "chmod 600" in str(http.value)
