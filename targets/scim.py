"""SCIM 2.0 service providers (RFC 7643/7644): find the user with a filter, PATCH its password.

A change is two requests: ``GET {base_url}/Users?filter=userName eq "..."`` (or ``externalId``)
finds exactly one user, then ``PATCH {base_url}/Users/{id}`` replaces ``password``. Both carry a
bearer token: a static one (``token`` / ``token_file``) or one obtained with the OAuth2
client-credentials grant (configured in :mod:`targets.scim_settings`, fetched by
:mod:`targets.scim_http`). Redirects are never followed, so the password only ever goes to
``base_url``. A PATCH replace is idempotent, so retrying after a timeout whose outcome is unknown
is safe.

How answers are classified (see ``docs/targets/scim.md``): no match, several matches, 404, 400,
409 and other 4xx are permanent; 401/403 are transient with a "credentials" reason, since an
operator can fix them and the queued changes then go through; 408, 429, 5xx (but 501), timeouts
and connection errors are transient, honouring ``Retry-After``. A server's error detail is
quoted only as :mod:`targets.redaction` allows.
"""

from __future__ import annotations

import json
import re
import ssl
import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar, Final
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError
from scim2_models import Context, Error, ListResponse, PatchOp, User

from targets.base import Password, PermanentError, TargetError, TargetSettings, TransientError
from targets.http_status import parse_retry_after
from targets.redaction import echoes, quotable
from targets.scim_http import MAX_BODY, Credentials, parse_json, read_body, translated_errors
from targets.scim_settings import MatchAttribute, ScimSettings, credentials_from

__all__ = ["ScimSettings", "ScimTarget", "parse_error", "safe_detail", "user_filter"]

SCIM_MEDIA_TYPE: Final = "application/scim+json"
_ACCEPT: Final = f"{SCIM_MEDIA_TYPE}, application/json"
_USER_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
_MAX_DETAIL: Final = 200
_SCIM_TYPE: Final = re.compile(r"[A-Za-z]{1,40}")
_CHECK_ACCOUNT: Final = "pcns-connectivity-check"


def user_filter(attribute: MatchAttribute, value: str) -> str:
    """``attribute eq "value"`` with the value as a JSON string (RFC 7644 §3.4.2.2).

    JSON escaping handles quotes, backslashes and control characters; non-ASCII stays as UTF-8
    rather than ``\\uXXXX``, which hand-written filter parsers handle more often.
    """
    return f"{attribute} eq {json.dumps(value, ensure_ascii=False)}"


def _normalised(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def safe_detail(detail: str | None, password: str | None) -> str:
    """A server's error ``detail`` fit for a reason: one short line that never echoes the password.

    A detail that repeats any part of the password (by :mod:`targets.redaction`'s rule) is
    withheld entirely; otherwise it is folded to one line of at most ``_MAX_DETAIL`` characters.
    """
    if not detail:
        return ""
    quoted = quotable(detail, [password] if password else [], _MAX_DETAIL)
    return "(detail withheld: it repeats part of the password)" if quoted is None else quoted


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
        plain = _SCIM_TYPE.fullmatch(scim_type) and not (password and echoes(scim_type, [password]))
        parts.append(scim_type if plain else "(non-standard scimType)")
    detail = safe_detail(error.detail if error is not None else None, password)
    reason = " ".join(parts) + (f": {detail}" if detail else "")
    if status in (401, 403):
        return TransientError(
            f"SCIM server refused our credentials ({reason}); fix the token or client credentials"
        )
    if status in (408, 429) or (status >= 500 and status != 501):
        return TransientError(reason, retry_after=parse_retry_after(headers.get("Retry-After")))
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
