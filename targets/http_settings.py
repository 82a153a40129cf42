"""What an ``http`` target is configured as: the request templates, authentication, TLS and
status rules, all checked when the configuration is loaded.

The URL and headers are templates over ``{account}``; the body is a JSON structure whose
strings may also use ``{password}`` and, when ``hash`` is set, ``{password_hash}``. A password
placeholder anywhere but the body is refused here, so it can never reach a URL or a header.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, JsonValue, ValidationInfo, field_validator, model_validator

from targets.base import TargetSettings, read_secret_file
from targets.hashing import HashScheme
from targets.http_status import DEFAULT_RULES, StatusRule, StatusTable, Verdict
from targets.templates import Template

ACCOUNT: Final = ("account",)
SECRET_FIELDS: Final = ("password", "password_hash")
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
SAMPLE_ACCOUNT: Final = "pcns-sample-account"
SAMPLE: Final = {"account": SAMPLE_ACCOUNT}

JsonBody = dict[str, JsonValue] | list[JsonValue]


def _template(text: str, allowed: Collection[str]) -> Template:
    """Parse ``text``; a password placeholder outside the body gets its own message."""
    used = Template.parse(text, (*allowed, *SECRET_FIELDS)).fields
    if used & set(SECRET_FIELDS) - set(allowed):
        raise ValueError("the password may appear only in body, never in the URL or a header")
    return Template.parse(text, allowed)


def _body_fields(value: JsonValue, allowed: Collection[str]) -> set[str]:
    """Placeholders used in the body's strings; keys are templates without placeholders."""
    if isinstance(value, str):
        return set(Template.parse(value, allowed).fields)
    if isinstance(value, list):
        return set().union(*(_body_fields(item, allowed) for item in value))
    if isinstance(value, dict):
        for key in value:
            Template.parse(key, ())
        return set().union(*(_body_fields(item, allowed) for item in value.values()))
    return set()


def render_body(value: JsonValue, values: Mapping[str, str]) -> JsonValue:
    """The body structure with every string's placeholders filled in from ``values``."""
    if isinstance(value, str):
        return Template.parse(value, values.keys()).render(values)
    if isinstance(value, list):
        return [render_body(item, values) for item in value]
    if isinstance(value, dict):
        return {
            Template.parse(key, ()).render({}): render_body(item, values)
            for key, item in value.items()
        }
    return value


def _no_key_password() -> str:
    raise ValueError("client_key is encrypted; give an unencrypted key (readable by pcns only)")


def ssl_context(cert: Path | None, key: Path | None, ca_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2 or later, trusting ``ca_file`` (else the system's CAs), with a client certificate
    when ``cert`` is set; a passphrase-protected key is refused rather than prompted for."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key, password=_no_key_password)
    return context


class HttpSettings(TargetSettings):
    """Request template, authentication, TLS and status classification of one REST target."""

    # Headers may carry static API keys: keep raw input out of validation error messages.
    model_config = ConfigDict(hide_input_in_errors=True)

    allow_insecure: bool = False
    hash: HashScheme | None = None
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    url: str
    check_url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: JsonBody
    timeout: float = Field(default=10.0, gt=0)
    bearer_token_file: Path | None = None
    basic_user: str | None = None
    basic_password_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None
    done: tuple[StatusRule, ...] = DEFAULT_RULES["done"]
    permanent: tuple[StatusRule, ...] = DEFAULT_RULES["permanent"]
    transient: tuple[StatusRule, ...] = DEFAULT_RULES["transient"]

    @field_validator("url", "check_url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        allowed = ACCOUNT if info.field_name == "url" else ()
        parts = urlsplit(_template(value, allowed).render(SAMPLE))
        if parts.scheme == "http" and not info.data.get("allow_insecure", False):
            raise ValueError("https is required; set allow_insecure = true to allow plain http")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute https:// URL")
        if SAMPLE_ACCOUNT in parts.netloc:
            raise ValueError("{account} may appear in the path or query, not the host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("no credentials in the URL; use basic_user and basic_password_file")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(c in template for c in "\r\n\0"):
                raise ValueError(f"{name}: a header value cannot contain a line break or NUL")
            try:
                _template(template, ACCOUNT)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value

    @field_validator("body")
    @classmethod
    def _body(cls, value: JsonBody, info: ValidationInfo) -> JsonBody:
        # When ``hash`` itself failed validation, do not add a second error about it here.
        hashing = info.data.get("hash") is not None or "hash" not in info.data
        used = _body_fields(value, ("account", *SECRET_FIELDS))
        if "password_hash" in used and not hashing:
            raise ValueError("{password_hash} needs a hash scheme: set hash")
        if not used & {"password", "password_hash"}:
            wanted = "{password} or {password_hash}" if hashing else "{password}"
            raise ValueError(f"must use {wanted} in some string value")
        if info.data.get("hash") is not None and "password_hash" not in used:
            raise ValueError("hash is set, so use {password_hash} in some string value")
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            raise ValueError("nan and inf are not JSON numbers") from None
        return value

    @field_validator("done", "permanent", "transient")
    @classmethod
    def _rules(cls, value: tuple[StatusRule, ...]) -> tuple[StatusRule, ...]:
        StatusTable.build({"done": value})
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            StatusTable.build(self.status_rules())
        except ValueError as exc:
            raise ValueError(f"done/permanent/transient: {exc}") from None
        if (self.basic_user is None) != (self.basic_password_file is None):
            raise ValueError("basic_user and basic_password_file: set both or neither")
        if self.basic_user is not None and ":" in self.basic_user:
            raise ValueError("basic_user: cannot contain ':'")
        if self.basic_user is not None and self.bearer_token_file is not None:
            raise ValueError("bearer_token_file: set either bearer or basic authentication")
        if (self.basic_user or self.bearer_token_file) and any(
            name.lower() == "authorization" for name in self.headers
        ):
            raise ValueError("headers: Authorization is set by bearer/basic auth already")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key: needs client_cert")
        if self.bearer_token_file is not None:
            read_secret_file(self.bearer_token_file, what="bearer_token_file")
        if self.basic_password_file is not None:
            read_secret_file(self.basic_password_file, what="basic_password_file")
        try:
            ssl_context(self.client_cert, self.client_key, self.ca_file)
        except (OSError, ValueError) as exc:
            field = "ca_file" if self.client_cert is None else "client_cert/client_key/ca_file"
            raise ValueError(f"{field}: cannot load: {exc}") from None
        return self

    def status_rules(self) -> dict[Verdict, tuple[StatusRule, ...]]:
        return {"done": self.done, "permanent": self.permanent, "transient": self.transient}
