"""A generic REST web service: one templated HTTP request per password change.

The URL and headers are templates over ``{account}`` (percent-encoded in the URL); the body is
a JSON structure whose strings may also use ``{password}`` and, when ``hash`` is set,
``{password_hash}``. The password goes only into the body, never into the URL or a header, and
the body is rendered by walking the structure and serialising it with :mod:`json`, so every
password is escaped correctly. The answer is judged by :mod:`targets.http_status`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import json
import os
import re
import ssl
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import ClassVar, Final, Literal, Self, assert_never
from urllib.parse import quote, urlsplit

import aiohttp
import yarl
from multidict import CIMultiDict
from pydantic import ConfigDict, Field, JsonValue, ValidationInfo, field_validator, model_validator

from targets.base import (
    Password,
    PermanentError,
    TargetSettings,
    TransientError,
    read_secret_file,
)
from targets.hashing import HashScheme, hash_password_async
from targets.http_status import (
    DEFAULT_RULES,
    StatusRule,
    StatusTable,
    Verdict,
    parse_retry_after,
)
from targets.templates import Template, contains_secret, one_line

_ACCOUNT: Final = ("account",)
_SECRET_FIELDS: Final = ("password", "password_hash")
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SAMPLE_ACCOUNT: Final = "pcns-sample-account"
_SAMPLE: Final = {"account": _SAMPLE_ACCOUNT}
EXCERPT_CHARS: Final = 200
_READ_LIMIT: Final = 8192

JsonBody = dict[str, JsonValue] | list[JsonValue]


def _template(text: str, allowed: Collection[str]) -> Template:
    """Parse ``text``; a password placeholder outside the body gets its own message."""
    used = Template.parse(text, (*allowed, *_SECRET_FIELDS)).fields
    if used & set(_SECRET_FIELDS) - set(allowed):
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


def _render_body(value: JsonValue, values: Mapping[str, str]) -> JsonValue:
    if isinstance(value, str):
        return Template.parse(value, values.keys()).render(values)
    if isinstance(value, list):
        return [_render_body(item, values) for item in value]
    if isinstance(value, dict):
        return {
            Template.parse(key, ()).render({}): _render_body(item, values)
            for key, item in value.items()
        }
    return value


def _no_key_password() -> str:
    raise ValueError("client_key is encrypted; give an unencrypted key (readable by pcns only)")


def _ssl_context(cert: Path | None, key: Path | None, ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key, password=_no_key_password)
    return context


def _read_secret_file(path: Path, field: str) -> str:
    return read_secret_file(path, what=field)


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
        allowed = _ACCOUNT if info.field_name == "url" else ()
        parts = urlsplit(_template(value, allowed).render(_SAMPLE))
        if parts.scheme == "http" and not info.data.get("allow_insecure", False):
            raise ValueError("https is required; set allow_insecure = true to allow plain http")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute https:// URL")
        if _SAMPLE_ACCOUNT in parts.netloc:
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
                _template(template, _ACCOUNT)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value

    @field_validator("body")
    @classmethod
    def _body(cls, value: JsonBody, info: ValidationInfo) -> JsonBody:
        # When ``hash`` itself failed validation, do not add a second error about it here.
        hashing = info.data.get("hash") is not None or "hash" not in info.data
        used = _body_fields(value, ("account", *_SECRET_FIELDS))
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
            _read_secret_file(self.bearer_token_file, "bearer_token_file")
        if self.basic_password_file is not None:
            _read_secret_file(self.basic_password_file, "basic_password_file")
        try:
            _ssl_context(self.client_cert, self.client_key, self.ca_file)
        except (OSError, ValueError) as exc:
            field = "ca_file" if self.client_cert is None else "client_cert/client_key/ca_file"
            raise ValueError(f"{field}: cannot load: {exc}") from None
        return self

    def status_rules(self) -> dict[Verdict, tuple[StatusRule, ...]]:
        return {"done": self.done, "permanent": self.permanent, "transient": self.transient}


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
        self._headers = {k: Template.parse(v, _ACCOUNT) for k, v in settings.headers.items()}
        self._statuses = StatusTable.build(settings.status_rules())
        sample = str(yarl.URL(Template.parse(settings.url, _ACCOUNT).render(_SAMPLE)))
        # yarl normalises the literal parts once; each account is then percent-encoded by us
        # alone (every byte but unreserved ones), so "/", "?", "&", "#" stay inside its segment.
        self._url_pieces = sample.split(_SAMPLE_ACCOUNT)
        parts = urlsplit(sample)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._where = parts.netloc
        self._ssl = _ssl_context(settings.client_cert, settings.client_key, settings.ca_file)
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
            body = _render_body(settings.body, values)
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            url = yarl.URL(quote(account, safe="").join(self._url_pieces), encoded=True)
        except UnicodeEncodeError:
            # ``from None``: the UnicodeEncodeError carries the whole body in ``.object``.
            raise PermanentError("password or account is not valid Unicode") from None
        headers = CIMultiDict({"Content-Type": "application/json"})
        headers.update(self._account_headers(account))  # a configured Content-Type wins
        headers.update(await self._auth_headers())
        secrets = [value for key, value in values.items() if key in _SECRET_FIELDS]
        async with self._translated_errors():
            session = await self._client()
            async with session.request(
                settings.method, url, data=data, headers=headers, allow_redirects=False
            ) as response:
                await self._judge(response, secrets)

    async def _judge(self, response: aiohttp.ClientResponse, secrets: list[str]) -> None:
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
                if contains_secret(raw, secrets):
                    raise PermanentError(f"{label} (body withheld: it echoes the password)")
                excerpt = one_line(raw, EXCERPT_CHARS)
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
                    _read_secret_file, settings.bearer_token_file, "bearer_token_file"
                )
                return {"Authorization": f"Bearer {token}"}
            if settings.basic_user is not None and settings.basic_password_file is not None:
                secret = await asyncio.to_thread(
                    _read_secret_file, settings.basic_password_file, "basic_password_file"
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
