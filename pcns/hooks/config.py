"""The hook's own small TOML file: where pcns is, which source this is, where its secret lives.

The secret itself is only ever read from ``secret_file`` (mode 0600), never from a command line,
where every local user could read it in the process list.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pcns.client import client_ssl_context, load_recipient
from pcns.config import Duration, format_validation_error, is_loopback, read_toml
from pcns.errors import ConfigError
from vault import HookPublicKey
from vault.hook_seal import KEY_ID_PATTERN

_NAME = r"^[^\x00-\x1f\x7f]{1,256}$"


class HookSettings(BaseModel):
    """``url``, ``source`` and ``secret_file`` are required; the rest has defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="pcns receiver base URL, e.g. https://pcns.corp.example:8443")
    source: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    secret_file: Path
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    domain: str | None = Field(default=None, pattern=_NAME)
    timeout: Duration = Field(default=10.0, gt=0)
    retry_for: Duration = Field(default=60.0, ge=0)
    # Seal each password to this pcns hook key (both or neither): `pcns keys hook export`.
    recipient_key_id: str | None = Field(default=None, pattern=KEY_ID_PATTERN)
    recipient_key_file: Path | None = None

    @model_validator(mode="after")
    def _recipient_pair(self) -> HookSettings:
        if (self.recipient_key_id is None) != (self.recipient_key_file is None):
            raise ValueError("recipient_key_id and recipient_key_file go together")
        return self

    @field_validator("url")
    @classmethod
    def _https_off_loopback(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            # The body carries the password: in clear only over loopback.
            raise ValueError("must use https:// unless the receiver is on loopback")
        return value.rstrip("/")

    def recipient(self) -> HookPublicKey | None:
        """The hook key to seal to, or None to send the password itself (over TLS)."""
        if self.recipient_key_id is None or self.recipient_key_file is None:
            return None
        return load_recipient(self.recipient_key_id, self.recipient_key_file)

    def ssl_context(self) -> ssl.SSLContext | None:
        """System CAs plus ``ca_file``; a client certificate when the receiver wants mutual TLS."""
        return client_ssl_context(self.ca_file, self.cert_file, self.key_file)


def load_hook_settings(path: Path) -> HookSettings:
    """Read and validate; :class:`ConfigError` names the key and never echoes a value."""
    data = read_toml(path, "hook config")
    try:
        return HookSettings(**data)
    except ValidationError as exc:
        raise ConfigError(f"hook config {path}: {format_validation_error(exc)}") from None
