"""The password-change body a hook posts, validated without ever echoing a value."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from vault.hook_seal import ENC_BYTES, KEY_ID_PATTERN, TAG_BYTES


class BodyRejected(Exception):
    """The body is not a valid password change; ``detail`` names fields, never values."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


def _no_nul(value: SecretStr) -> SecretStr:
    if "\x00" in value.get_secret_value():
        raise ValueError("must not contain NUL characters")
    return value


def _base64(value: object) -> object:
    if not isinstance(value, str):
        return value  # refused by the bytes validation that follows
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64") from None


Name = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
MAX_PASSWORD_CHARS = 1024
Password = Annotated[
    SecretStr, Field(min_length=1, max_length=MAX_PASSWORD_CHARS), AfterValidator(_no_nul)
]
# The same rules for a password opened from ``sealed``.
_PASSWORD_RULES: TypeAdapter[SecretStr] = TypeAdapter(Password)
# enc + the password's UTF-8 (at most 4 bytes a character) + the tag.
_SEALED_BYTES = (ENC_BYTES + 1 + TAG_BYTES, ENC_BYTES + 4 * MAX_PASSWORD_CHARS + TAG_BYTES)


class SealedIn(BaseModel):
    """A password sealed by the hook to a pcns hook key (RFC 9180 HPKE, see vault.hook_seal)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    key_id: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    ciphertext: Annotated[
        bytes,
        BeforeValidator(_base64),
        Field(min_length=_SEALED_BYTES[0], max_length=_SEALED_BYTES[1]),
    ]

    def __repr__(self) -> str:
        return f"SealedIn(key_id={self.key_id!r}, {len(self.ciphertext)} bytes)"


class PasswordChangeIn(BaseModel):
    """Exactly one of ``password`` (plaintext over TLS) and ``sealed`` (sealed by the hook)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    user: Name
    password: Password | None = None
    sealed: SealedIn | None = None
    domain: Name | None = None
    upn: Name | None = None
    sid: Annotated[str, Field(pattern=r"^S-1-[0-9-]{1,180}$")] | None = None
    changed_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_password(self) -> PasswordChangeIn:
        if (self.password is None) == (self.sealed is None):
            raise ValueError("give exactly one of password and sealed")
        return self


def check_password(password: str) -> str:
    """The rules ``password`` follows, for a password opened from ``sealed``; never echoes it."""
    try:
        _PASSWORD_RULES.validate_python(password)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        detail = "; ".join(err["msg"] for err in errors)
        raise BodyRejected(f"sealed: the opened password: {detail}") from None
    return password


ALLOWED_FIELDS = ", ".join(PasswordChangeIn.model_fields)


def parse_change(body: bytes) -> PasswordChangeIn:
    """Decode and validate in one pass; :class:`BodyRejected` says which fields are wrong."""
    try:
        return PasswordChangeIn.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise BodyRejected("body is not valid UTF-8 JSON") from None
        if any(err["type"] == "model_type" and not err["loc"] for err in errors):
            raise BodyRejected("body must be a JSON object") from None
        parts = []
        for err in errors:
            if err["type"] == "extra_forbidden":
                # An unknown key is input too: name the allowed fields instead of echoing it.
                parts.append(f"unknown field; allowed fields are {ALLOWED_FIELDS}")
                continue
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            parts.append(f"{loc}: {err['msg']}")
        raise BodyRejected("; ".join(parts)) from None
