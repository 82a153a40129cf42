"""What a ``scim`` target is configured as: the service provider's URL, how a user is matched,
and where the bearer token comes from (a static token, a token file, or the OAuth2
client-credentials grant of :mod:`targets.scim_http`), all checked when the configuration is
loaded.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yarl import URL

from targets.base import TargetSettings
from targets.scim_http import (
    BearerFile,
    Credentials,
    OAuth2ClientCredentials,
    StaticBearer,
    read_credential,
)

MatchAttribute = Literal["userName", "externalId"]


class ScimSettings(TargetSettings):
    """Where the SCIM service provider is, how to authenticate and which attribute names a user.

    Exactly one of ``token``, ``token_file`` or ``oauth2_token_url`` (with ``client_id`` and one
    of ``client_secret`` / ``client_secret_file``). ``timeout`` is in seconds, per request.
    """

    # Tokens and client secrets are SecretStr; keep raw input out of validation error messages.
    model_config = ConfigDict(hide_input_in_errors=True)

    base_url: str
    match_attribute: MatchAttribute = "userName"
    token: SecretStr | None = None
    token_file: Path | None = None
    oauth2_token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    scope: str | None = None
    oauth2_client_auth: Literal["basic", "post"] = "basic"
    ca_file: Path | None = None
    allow_insecure: bool = False
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("base_url", "oauth2_token_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            url = URL(value)
        except (ValueError, TypeError):
            raise ValueError("is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if url.user is not None or url.password is not None:
            raise ValueError("must not carry credentials; use the token or client secret fields")
        if url.query_string or url.fragment:
            raise ValueError("must not have a query or a fragment")
        return str(url).rstrip("/") if info.field_name == "base_url" else str(url)

    @field_validator("token_file", "client_secret_file")
    @classmethod
    def _secret_file_readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            # ValueError naming the problem, never the content.
            read_credential(value, what=str(info.field_name), token=info.field_name == "token_file")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load CA certificates from {value}: {exc}") from None
        return value

    @field_validator("token")
    @classmethod
    def _token_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            StaticBearer(value)  # ValueError when it cannot go into a header
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for field in ("base_url", "oauth2_token_url"):
            url = getattr(self, field)
            if url is not None and url.startswith("http://") and not self.allow_insecure:
                raise ValueError(
                    f"{field} must use https:// (set allow_insecure = true to allow plain http)"
                )
        sources = [f for f in ("token", "token_file", "oauth2_token_url") if getattr(self, f)]
        if len(sources) != 1:
            raise ValueError(
                "set exactly one of token, token_file and oauth2_token_url (client credentials)"
            )
        oauth_fields = ("client_id", "client_secret", "client_secret_file", "scope")
        if self.oauth2_token_url is None:
            stray = [f for f in (*oauth_fields, "oauth2_client_auth") if f in self.model_fields_set]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply with oauth2_token_url")
            return self
        if not self.client_id:
            raise ValueError("oauth2_token_url needs client_id")
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError(
                "oauth2_token_url needs exactly one of client_secret and client_secret_file"
            )
        return self


def credentials_from(settings: ScimSettings) -> Credentials:
    """The credential source ``settings`` configure (validated to be exactly one)."""
    if settings.token is not None:
        return StaticBearer(settings.token)
    if settings.token_file is not None:
        return BearerFile(settings.token_file)
    assert settings.oauth2_token_url is not None
    assert settings.client_id is not None
    secret = settings.client_secret or settings.client_secret_file
    assert secret is not None
    return OAuth2ClientCredentials(
        settings.oauth2_token_url,
        settings.client_id,
        secret,
        scope=settings.scope,
        client_auth=settings.oauth2_client_auth,
    )
