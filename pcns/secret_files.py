"""Reading and creating the secret files the service needs: source secrets and the admin token."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from pcns.errors import SecretFileError

WHSEC_PREFIX = "whsec_"


def read_private_file(path: Path, what: str) -> str:
    """The stripped text of a secret file that only its owner may access."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SecretFileError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError):
        raise SecretFileError(f"{what} file {path} cannot be read") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"{what} file {path} has mode {stat.S_IMODE(mode):04o}; "
            "group and others must have no access (chmod 600)"
        )
    if not text:
        raise SecretFileError(f"{what} file {path} is empty")
    return text


def decode_webhook_secret(text: str, *, what: str) -> bytes:
    """Standard Webhooks secret ``whsec_<base64>`` -> key bytes."""
    if not text.startswith(WHSEC_PREFIX):
        raise SecretFileError(f"{what} must start with {WHSEC_PREFIX!r}")
    try:
        key = base64.b64decode(text[len(WHSEC_PREFIX) :], validate=True)
    except binascii.Error:
        raise SecretFileError(f"{what} is not valid base64 after {WHSEC_PREFIX!r}") from None
    if len(key) < 24:
        raise SecretFileError(f"{what} is too short (at least 24 bytes of key)")
    return key


def read_webhook_secret(path: Path) -> bytes:
    return decode_webhook_secret(read_private_file(path, "source secret"), what=f"secret in {path}")


def write_private_file(path: Path, text: str) -> bool:
    """Create ``path`` with mode 0600 unless it exists; True when it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return True


def new_webhook_secret() -> str:
    return WHSEC_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_admin_token() -> str:
    return secrets.token_urlsafe(32)
