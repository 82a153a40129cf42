"""HTTP plumbing of the ``scim`` target: bearer credentials, bounded reads, error translation.

Three credential sources answer ``authorization()`` with an ``Authorization`` header value: a
static token, a token file (re-read after a 401, so a rotated file is picked up) and the OAuth2
client-credentials grant (RFC 6749 §4.4; the access token is cached until shortly before it
expires and fetched again after a 401). Every token endpoint failure is transient: none is about
the password being delivered, and an operator can fix each of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Final, Literal, Protocol
from urllib.parse import quote_plus

import aiohttp
from pydantic import SecretStr

from targets.base import TransientError, read_secret_file
from targets.http_status import parse_retry_after

MAX_BODY: Final = 1024 * 1024
# RFC 6750 b64token, loosened to any visible ASCII: what can go into a header unmangled.
_TOKEN: Final = re.compile(r"[\x21-\x7e]+")
_OAUTH_ERROR_CODE: Final = re.compile(r"[A-Za-z0-9_.-]{1,60}")
# Fetch a new access token this long before the old one expires (at most a tenth of its life).
_EXPIRY_MARGIN: Final = 60.0


def read_credential(path: Path, *, what: str, token: bool = False) -> str:
    """:func:`targets.base.read_secret_file`, and for a bearer token its character set."""
    value = read_secret_file(path, what=what).strip()
    if token and not _TOKEN.fullmatch(value):
        raise ValueError(f"{what}: {path} holds spaces or characters a bearer token cannot have")
    return value


def parse_json(body: bytes) -> object:
    """``body`` as JSON, or None; a parse error is swallowed, since it would quote the body."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None


async def read_body(response: aiohttp.ClientResponse, limit: int = MAX_BODY) -> bytes:
    """At most ``limit + 1`` bytes of the body, so that an oversized one can be told apart."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


@contextlib.asynccontextmanager
async def translated_errors(where: str) -> AsyncIterator[None]:
    """aiohttp and timeout errors as TransientError naming ``where``, never the request.

    ``ClientResponseError`` keeps the request's headers (the bearer token among them) in
    ``request_info``, so it is not chained.
    """
    try:
        yield
    except TimeoutError as exc:
        raise TransientError(f"{where} did not answer in time") from exc
    except aiohttp.ClientResponseError as exc:
        raise TransientError(f"{where}: {type(exc).__name__}") from None
    except aiohttp.ClientSSLError as exc:
        reason = f"TLS with {where} failed: {type(exc).__name__}; check ca_file"
        raise TransientError(reason) from exc
    except aiohttp.ClientError as exc:
        raise TransientError(f"cannot reach {where}: {type(exc).__name__}") from exc


class Credentials(Protocol):
    """Where a request's ``Authorization`` header comes from."""

    async def authorization(self, session: aiohttp.ClientSession) -> str: ...

    def renew(self, failed: str) -> bool:
        """After a 401 for ``failed``: whether asking again may give a different credential."""
        ...


class StaticBearer:
    """A token from the configuration itself."""

    def __init__(self, token: SecretStr) -> None:
        value = token.get_secret_value().strip()
        if not _TOKEN.fullmatch(value):
            raise ValueError("token holds spaces or characters a bearer token cannot have")
        self._header = f"Bearer {value}"

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        return self._header

    def renew(self, failed: str) -> bool:
        return False


class BearerFile:
    """A token read from a file on first use and again after the server refuses it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._header: str | None = None

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        if self._header is None:
            try:
                token = await asyncio.to_thread(
                    read_credential, self._path, what="token_file", token=True
                )
            except ValueError as exc:
                raise TransientError(f"{exc}; fix the credentials file") from None
            self._header = f"Bearer {token}"
        return self._header

    def renew(self, failed: str) -> bool:
        self._header = None
        return True


class OAuth2ClientCredentials:
    """Access tokens from an OAuth2 token endpoint (client-credentials grant), cached."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr | Path,
        *,
        scope: str | None = None,
        client_auth: Literal["basic", "post"] = "basic",
    ) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._client_auth = client_auth
        self._lock = asyncio.Lock()
        self._header: str | None = None
        self._valid_until = 0.0
        self.fetched = 0  # how many tokens were fetched, for tests and metrics

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        # One fetch at a time: concurrent deliveries wait for the same new token.
        async with self._lock:
            if self._header is None or time.monotonic() >= self._valid_until:
                self._header, self._valid_until = await self._fetch(session)
            return self._header

    def renew(self, failed: str) -> bool:
        # Only drop the token that failed: another delivery may already have fetched a new one.
        if self._header == failed:
            self._header = None
        return True

    async def _secret(self) -> str:
        if isinstance(self._client_secret, SecretStr):
            return self._client_secret.get_secret_value()
        try:
            return await asyncio.to_thread(
                read_credential, self._client_secret, what="client_secret_file"
            )
        except ValueError as exc:
            raise TransientError(f"{exc}; fix the credentials file") from None

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        secret = await self._secret()
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        request_headers = {"Accept": "application/json"}
        if self._client_auth == "basic":  # RFC 6749 §2.3.1: form-encode each, then HTTP Basic
            pair = f"{quote_plus(self._client_id)}:{quote_plus(secret)}".encode("ascii")
            request_headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form |= {"client_id": self._client_id, "client_secret": secret}
        started = time.monotonic()
        async with (
            translated_errors("OAuth2 token endpoint"),
            session.post(
                self._token_url,
                data=form,
                headers=request_headers,
                allow_redirects=False,
            ) as response,
        ):
            status, headers = response.status, response.headers
            body = await read_body(response, 64 * 1024)
        if status != 200:
            raise _token_error(status, headers, body)
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise TransientError("OAuth2 token endpoint: the answer is not a JSON object")
        token, token_type = payload.get("access_token"), payload.get("token_type", "Bearer")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise TransientError("OAuth2 token endpoint: no usable access_token in the answer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TransientError("OAuth2 token endpoint issued a token that is not a bearer token")
        self.fetched += 1
        return f"Bearer {token}", started + _lifetime(payload.get("expires_in"))


def _lifetime(expires_in: object) -> float:
    """How long to use a token: its ``expires_in`` less a margin; forever when it has none."""
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
        return math.inf  # used until the server answers 401
    expires_in = max(0.0, float(expires_in))
    return expires_in - min(_EXPIRY_MARGIN, expires_in / 10)


def _token_error(status: int, headers: Mapping[str, str], body: bytes) -> TransientError:
    payload = parse_json(body)
    code = payload.get("error") if isinstance(payload, dict) else None
    label = f"HTTP {status}"
    if isinstance(code, str) and _OAUTH_ERROR_CODE.fullmatch(code):
        label += f", {code}"
    if status in (400, 401, 403):
        return TransientError(
            f"OAuth2 token endpoint refused the client credentials ({label}); "
            "fix client_id, the client secret or scope"
        )
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return TransientError(f"OAuth2 token endpoint answered {label}", retry_after=retry_after)
