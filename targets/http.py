"""A generic REST web service: one templated HTTP request per password change.

The request is configured and checked by :mod:`targets.http_settings`: the URL and headers
carry only ``{account}`` (percent-encoded in the URL), and the password goes only into the
body, which is rendered by walking its JSON structure and serialising it with :mod:`json`, so
every password is escaped correctly. The answer is judged by :mod:`targets.http_status`, and a
refusal's body is quoted only as :mod:`targets.redaction` allows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import json
import os
import ssl
from collections.abc import AsyncIterator
from typing import ClassVar, Final, assert_never
from urllib.parse import quote, urlsplit

import aiohttp
import yarl
from multidict import CIMultiDict

from targets.base import (
    Password,
    PermanentError,
    TargetSettings,
    TransientError,
    read_secret_file,
)
from targets.hashing import hash_password_async
from targets.http_settings import (
    ACCOUNT,
    SAMPLE,
    SAMPLE_ACCOUNT,
    HttpSettings,
    render_body,
    ssl_context,
)
from targets.http_status import StatusTable, parse_retry_after
from targets.redaction import quotable
from targets.templates import Template

__all__ = ["EXCERPT_CHARS", "HttpSettings", "HttpTarget"]

EXCERPT_CHARS: Final = 200
_READ_LIMIT: Final = 8192


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    data = b""
    while len(data) < limit and (chunk := await response.content.read(limit - len(data))):
        data += chunk
    return data


def _os_detail(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):  # its errno is an OpenSSL code, not an errno value
        return f"TLS error {exc.reason or type(exc).__name__}"
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or type(exc).__name__


def _phrase(status: int) -> str:
    # Never the server's own reason phrase: it is text the target chose, like the body.
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class HttpTarget:
    """Sends each new password (or its hash) to a REST endpoint in a templated JSON request."""

    settings_model: ClassVar[type[TargetSettings]] = HttpSettings

    def __init__(self, name: str, settings: HttpSettings) -> None:
        self.name = name
        self._settings = settings
        self._headers = {k: Template.parse(v, ACCOUNT) for k, v in settings.headers.items()}
        self._statuses = StatusTable.build(settings.status_rules())
        sample = str(yarl.URL(Template.parse(settings.url, ACCOUNT).render(SAMPLE)))
        # yarl normalises the literal parts once; each account is then percent-encoded by us
        # alone (every byte but unreserved ones), so "/", "?", "&", "#" stay inside its segment.
        self._url_pieces = sample.split(SAMPLE_ACCOUNT)
        parts = urlsplit(sample)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._where = parts.netloc
        self._ssl = ssl_context(settings.client_cert, settings.client_key, settings.ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"HttpTarget(name={self.name!r}, url={self._settings.url!r})"

    async def set_password(self, account: str, password: Password) -> None:
        """Send one request carrying ``password`` (or its hash) in the body for ``account``."""
        settings = self._settings
        values = {"account": account, "password": password.reveal()}
        if settings.hash is not None:
            values["password_hash"] = await hash_password_async(settings.hash, password)
        try:
            body = render_body(settings.body, values)
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            url = yarl.URL(quote(account, safe="").join(self._url_pieces), encoded=True)
        except UnicodeEncodeError:
            # ``from None``: the UnicodeEncodeError carries the whole body in ``.object``.
            raise PermanentError("password or account is not valid Unicode") from None
        headers = CIMultiDict({"Content-Type": "application/json"})
        headers.update(self._account_headers(account))  # a configured Content-Type wins
        headers.update(await self._auth_headers())
        async with self._translated_errors():
            session = await self._client()
            async with session.request(
                settings.method, url, data=data, headers=headers, allow_redirects=False
            ) as response:
                await self._judge(response, values)

    async def _judge(self, response: aiohttp.ClientResponse, values: dict[str, str]) -> None:
        status = response.status
        label = f"{self._where} answered HTTP {status} {_phrase(status)}".rstrip()
        verdict = self._statuses.classify(status)
        match verdict:
            case "done":
                return
            case "transient":
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise TransientError(label, retry_after=retry_after)
            case "permanent":
                raw = await _read_capped(response, _READ_LIMIT)
                excerpt = quotable(
                    raw,
                    [values["password"]],
                    EXCERPT_CHARS,
                    # The hash counts whole only: a piece of it says nothing about the password.
                    whole=[values["password_hash"]] if "password_hash" in values else [],
                    truncated=len(raw) >= _READ_LIMIT,
                )
                if excerpt is None:
                    raise PermanentError(f"{label} (body withheld: it echoes the password)")
                raise PermanentError(f"{label}: {excerpt}" if excerpt else label)
            case _:
                assert_never(verdict)

    def _account_headers(self, account: str) -> dict[str, str]:
        if any(c in account for c in "\r\n\0") and any(t.fields for t in self._headers.values()):
            raise PermanentError("account contains a line break or NUL; it cannot go in a header")
        return {name: t.render({"account": account}) for name, t in self._headers.items()}

    async def _auth_headers(self) -> dict[str, str]:
        """The Authorization header, from files re-read each time: rotation needs no restart."""
        settings = self._settings
        try:
            if settings.bearer_token_file is not None:
                token = await asyncio.to_thread(
                    read_secret_file, settings.bearer_token_file, what="bearer_token_file"
                )
                return {"Authorization": f"Bearer {token}"}
            if settings.basic_user is not None and settings.basic_password_file is not None:
                secret = await asyncio.to_thread(
                    read_secret_file, settings.basic_password_file, what="basic_password_file"
                )
                pair = f"{settings.basic_user}:{secret}".encode()  # RFC 7617 with charset=UTF-8
                return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        return {}

    async def _client(self) -> aiohttp.ClientSession:
        async with self._session_lock:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self._ssl),
                    timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
                    # No cookie jar: one account's session cookies must never reach another's.
                    cookie_jar=aiohttp.DummyCookieJar(),
                    headers={"User-Agent": "pcns"},
                )
            return self._session

    @contextlib.asynccontextmanager
    async def _translated_errors(self) -> AsyncIterator[None]:
        """aiohttp, TLS and socket errors as TransientError (InvalidURL as PermanentError)."""
        where = self._where
        try:
            yield
        except aiohttp.InvalidURL:
            raise PermanentError("the URL is invalid for this account") from None
        except (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError) as exc:
            cause = getattr(exc, "certificate_error", exc)
            detail = getattr(cause, "verify_message", None) or type(cause).__name__
            raise TransientError(f"TLS certificate of {where} not accepted: {detail}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"cannot connect to {where}: {_os_detail(exc.os_error)}") from exc
        except TimeoutError as exc:
            limit = self._settings.timeout
            raise TransientError(f"{where} did not answer within {limit:g}s") from exc
        except aiohttp.ClientError as exc:
            detail = _os_detail(exc) if isinstance(exc, OSError) else type(exc).__name__
            raise TransientError(f"HTTP exchange with {where} failed: {detail}") from exc
        except OSError as exc:  # check()'s own TCP/TLS probe
            raise TransientError(f"cannot connect to {where}: {_os_detail(exc)}") from exc

    async def check(self) -> None:
        """GET ``check_url`` (2xx is ready), or open a TCP (and TLS) connection to the host."""
        if self._settings.check_url is None:
            async with self._translated_errors(), asyncio.timeout(self._settings.timeout):
                _, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl if self._tls else None,
                    server_hostname=self._host if self._tls else None,
                )
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            return
        headers = {n: t.render({}) for n, t in self._headers.items() if not t.fields}
        headers.update(await self._auth_headers())
        async with self._translated_errors():
            session = await self._client()
            async with session.get(
                self._settings.check_url, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return
                label = f"check_url answered HTTP {status} {_phrase(status)}".rstrip()
                if self._statuses.classify(status) == "transient":
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    raise TransientError(label, retry_after=retry_after)
                raise PermanentError(label)

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        async with self._session_lock:
            if self._session is not None:
                await self._session.close()
                self._session = None
