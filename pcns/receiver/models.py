"""The password-change body a hook posts, validated without ever echoing a value."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
)


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


Name = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]


class PasswordChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    user: Name
    password: Annotated[SecretStr, Field(min_length=1, max_length=1024), AfterValidator(_no_nul)]
    domain: Name | None = None
    upn: Name | None = None
    sid: Annotated[str, Field(pattern=r"^S-1-[0-9-]{1,180}$")] | None = None
    changed_at: AwareDatetime | None = None


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
