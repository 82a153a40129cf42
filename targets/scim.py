"""SCIM 2.0 service providers (RFC 7643/7644): find the user with a filter, PATCH its password.

A change is two requests: ``GET {base_url}/Users?filter=userName eq "..."`` (or ``externalId``)
finds exactly one user, then ``PATCH {base_url}/Users/{id}`` replaces ``password``. Both carry a
bearer token: a static one (``token`` / ``token_file``) or one obtained with the OAuth2
client-credentials grant (:mod:`targets.scim_http`). Redirects are never followed, so the password
only ever goes to ``base_url``. A PATCH replace is idempotent, so retrying after a timeout whose
outcome is unknown is safe.

How answers are classified (see ``docs/targets/scim.md``): no match, several matches, 404, 400,
409 and other 4xx are permanent; 401/403 are transient with a "credentials" reason, since an
operator can fix them and the queued changes then go through; 408, 429, 5xx (but 501), timeouts
and connection errors are transient, honouring ``Retry-After``.
"""

from __future__ import annotations

import json
import re
import ssl
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Self
from urllib.parse import quote

import aiohttp
from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from scim2_models import Context, Error, ListResponse, PatchOp, User
from yarl import URL

from targets.base import Password, PermanentError, TargetError, TargetSettings, TransientError
from targets.scim_http import (
    MAX_BODY,
    BearerFile,
    Credentials,
    OAuth2ClientCredentials,
    StaticBearer,
    parse_json,
    read_body,
    read_credential,
    retry_after_seconds,
    translated_errors,
)

MatchAttribute = Literal["userName", "externalId"]

SCIM_MEDIA_TYPE: Final = "application/scim+json"
_ACCEPT: Final = f"{SCIM_MEDIA_TYPE}, application/json"
_USER_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
_MAX_DETAIL: Final = 200
# A server's error detail is dropped when it shares this many consecutive characters with the
# password (or all of a shorter one): servers do echo rejected values ("'hunter2' is too short").
_ECHO_WINDOW: Final = 4
_SCIM_TYPE: Final = re.compile(r"[A-Za-z]{1,40}")
_CHECK_ACCOUNT: Final = "pcns-connectivity-check"


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


def user_filter(attribute: MatchAttribute, value: str) -> str:
    """``attribute eq "value"`` with the value as a JSON string (RFC 7644 §3.4.2.2).

    JSON escaping handles quotes, backslashes and control characters; non-ASCII stays as UTF-8
    rather than ``\\uXXXX``, which hand-written filter parsers handle more often.
    """
    return f"{attribute} eq {json.dumps(value, ensure_ascii=False)}"


def _normalised(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _visible(text: str) -> str:
    """``text`` without control, format (zero-width) and separator characters."""
    return "".join(c for c in text if unicodedata.category(c)[0] not in "CZ")


def _echoes(text: str, secret: str) -> bool:
    """Whether ``text`` contains ``secret``, or any ``_ECHO_WINDOW`` characters of it in a row.

    Compared after NFKC and case folding, with and without the invisible characters and spaces
    a server may have put between the characters, and also against the secret's JSON-escaped and
    percent-encoded forms, since servers quote rejected values in all of these ways.
    """
    haystacks = {_normalised(text), _normalised(_visible(text))}
    for form in {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}:
        needle = _normalised(form)
        width = min(len(needle), _ECHO_WINDOW)
        windows = (
            {needle[i : i + width] for i in range(len(needle) - width + 1)} if width else set()
        )
        if any(window in haystack for window in windows for haystack in haystacks):
            return True
    return False


def safe_detail(detail: str | None, password: str | None) -> str:
    """A server's error ``detail`` fit for a reason: one short line that never echoes the password.

    A detail that repeats any part of the password is withheld entirely (cutting the part out
    would still tell its length and place). Otherwise control characters become spaces and the
    text is cut to ``_MAX_DETAIL`` characters.
    """
    if not detail:
        return ""
    if password is not None and _echoes(detail, password):
        return "(detail withheld: it repeats part of the password)"
    cleaned = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in detail)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= _MAX_DETAIL else cleaned[: _MAX_DETAIL - 1] + "…"


def parse_error(body: bytes) -> Error | None:
    """The SCIM Error in ``body``, or None when it is not one (an HTML page, a bare status).

    Vendors add fields of their own, so only the RFC 7644 §3.12 members are read. Nothing about
    the body leaks from here: a parse failure is swallowed, not chained.
    """
    payload = parse_json(body)
    if not isinstance(payload, dict):
        return None
    known = {k: payload[k] for k in ("schemas", "status", "scimType", "detail") if k in payload}
    try:
        return Error.model_validate(known)
    except ValidationError:
        return None


def _error_for(
    status: int, headers: Mapping[str, str], body: bytes, action: str, password: str | None
) -> TargetError:
    """The adapter error for a non-2xx answer to ``action``."""
    error = parse_error(body)
    parts = [f"{action}: HTTP {status}"]
    if error is not None and error.scim_type:
        scim_type = error.scim_type
        plain = _SCIM_TYPE.fullmatch(scim_type) and not (password and _echoes(scim_type, password))
        parts.append(scim_type if plain else "(non-standard scimType)")
    detail = safe_detail(error.detail if error is not None else None, password)
    reason = " ".join(parts) + (f": {detail}" if detail else "")
    if status in (401, 403):
        return TransientError(
            f"SCIM server refused our credentials ({reason}); fix the token or client credentials"
        )
    if status in (408, 429) or (status >= 500 and status != 501):
        return TransientError(reason, retry_after=retry_after_seconds(headers.get("Retry-After")))
    if 300 <= status < 400:
        return PermanentError(f"{reason} (redirects are not followed; check base_url)")
    return PermanentError(reason)


def _patch_body(password: Password) -> bytes:
    """The PatchOp replacing ``password``, as UTF-8 JSON."""
    operation = {"op": "replace", "path": "password", "value": password.reveal()}
    try:
        patch = PatchOp[User[Any]].model_validate(
            {"Operations": [operation]}, scim_ctx=Context.RESOURCE_PATCH_REQUEST
        )
    except ValidationError:
        # Not chained: a validation error quotes its input, the password.
        raise PermanentError("the password cannot be sent as a SCIM PatchOp") from None
    payload = patch.model_dump(scim_ctx=Context.RESOURCE_PATCH_REQUEST)
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _matched_user(body: bytes, attribute: MatchAttribute, account: str) -> str:
    """The id of the one user in a ListResponse whose ``attribute`` is ``account``."""
    payload = parse_json(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("Resources", []), list):
        raise PermanentError("user lookup: the answer is not a SCIM ListResponse")
    # Only what identifies the user is validated: servers return extensions and values
    # (emails, phone numbers) that a full User model would refuse for reasons beside the point.
    resources = [
        {"schemas": [_USER_SCHEMA]} | {k: r[k] for k in ("id", attribute) if k in r}
        for r in payload.get("Resources") or []
        if isinstance(r, dict)
    ]
    try:
        listed = ListResponse[User[Any]].model_validate(
            {"totalResults": payload.get("totalResults"), "Resources": resources},
            scim_ctx=Context.SEARCH_RESPONSE,
        )
    except ValidationError:
        raise PermanentError("user lookup: the answer is not a valid SCIM ListResponse") from None
    users = listed.resources or []
    matches = max(listed.total_results or 0, len(users))
    if matches == 0:
        raise PermanentError(f"no user with that {attribute}")
    if matches > 1:
        raise PermanentError(f"{matches} users match that {attribute}; refusing to guess")
    if not users:
        raise PermanentError("user lookup: the server counted a match but returned none")
    user = users[0]
    # A server that ignores the filter and holds one user would otherwise get that user changed.
    found = user.user_name if attribute == "userName" else user.external_id
    if found is not None and (
        _normalised(found) != _normalised(account) if attribute == "userName" else found != account
    ):
        raise PermanentError(
            f"user lookup returned a user whose {attribute} differs; filter ignored?"
        )
    if not user.id:  # SEARCH_RESPONSE validation already insists on it
        raise PermanentError("user lookup: the matching user has no id")
    return user.id


class ScimTarget:
    """Sets ``password`` on SCIM 2.0 users found by ``userName`` or ``externalId``."""

    settings_model: ClassVar[type[TargetSettings]] = ScimSettings

    def __init__(self, name: str, settings: ScimSettings) -> None:
        self.name = name
        self._settings = settings
        self._users_url = f"{settings.base_url}/Users"
        self._credentials: Credentials = credentials_from(settings)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ScimTarget(name={self.name!r}, base_url={self._settings.base_url!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            settings = self._settings
            tls: ssl.SSLContext | bool = True
            if settings.ca_file is not None:
                tls = ssl.create_default_context(cafile=settings.ca_file)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls),
                timeout=aiohttp.ClientTimeout(total=settings.timeout),
                headers={"Accept": _ACCEPT},
            )
        return self._session

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Status, headers and (bounded) body; after a 401, once more with renewed credentials."""
        session = self._client()
        headers = {"Content-Type": SCIM_MEDIA_TYPE} if body is not None else {}
        for attempt in (1, 2):
            authorization = await self._credentials.authorization(session)
            async with (
                translated_errors("SCIM server"),
                session.request(
                    method,
                    url,
                    params=params,
                    data=body,
                    headers={**headers, "Authorization": authorization},
                    allow_redirects=False,
                ) as response,
            ):
                if (
                    response.status == 401
                    and attempt == 1
                    and self._credentials.renew(authorization)
                ):
                    continue
                return response.status, response.headers, await read_body(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find_user(self, account: str, password: str | None) -> str:
        attribute = self._settings.match_attribute
        params = {"filter": user_filter(attribute, account), "attributes": attribute, "count": "2"}
        status, headers, body = await self._request("GET", self._users_url, params=params)
        if status == 404:
            raise PermanentError("user lookup: HTTP 404 for /Users; check base_url")
        if status != 200:
            raise _error_for(status, headers, body, "user lookup", password)
        if len(body) > MAX_BODY:
            raise PermanentError("user lookup: answer over 1 MiB; the server ignored the filter?")
        return _matched_user(body, attribute, account)

    async def set_password(self, account: str, password: Password) -> None:
        """Find ``account``'s user and replace its password with one PATCH."""
        if not account:
            raise PermanentError("account name is empty")
        plaintext = password.reveal()
        user_id = await self._find_user(account, plaintext)
        url = f"{self._users_url}/{quote(user_id, safe='')}"
        status, headers, body = await self._request("PATCH", url, body=_patch_body(password))
        if 200 <= status < 300:
            return
        if status == 404:
            raise PermanentError("password change: HTTP 404, the user no longer exists")
        raise _error_for(status, headers, body, "password change", plaintext)

    async def check(self) -> None:
        """Reach the server, prove the credentials and the filter with a ``count=0`` query.

        Also reads ``/ServiceProviderConfig`` and fails when the server says it cannot PATCH.
        Writes nothing.
        """
        status, headers, body = await self._request(
            "GET", f"{self._settings.base_url}/ServiceProviderConfig"
        )
        if status == 200:
            config = parse_json(body)
            patch = config.get("patch") if isinstance(config, dict) else None
            if isinstance(patch, dict) and patch.get("supported") is False:
                raise PermanentError(
                    "the server's ServiceProviderConfig says PATCH is not supported"
                )
        elif status != 404:  # optional in practice, though RFC 7644 requires it
            raise _error_for(status, headers, body, "ServiceProviderConfig", None)
        attribute = self._settings.match_attribute
        params = {"filter": user_filter(attribute, _CHECK_ACCOUNT), "count": "0"}
        status, headers, body = await self._request("GET", self._users_url, params=params)
        if status == 404:
            raise PermanentError("user lookup: HTTP 404 for /Users; check base_url")
        if status != 200:
            raise _error_for(status, headers, body, "user lookup", None)

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None
