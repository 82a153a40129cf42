"""LDAP directories: RFC 3062 Password Modify, or a pre-hashed ``userPassword`` replace.

Every connection is LDAPS or StartTLS, the certificate and host name checked by the standard
library's ``ssl`` (plain LDAP only with ``allow_insecure``). A small pool of connections stays
bound as the service account; a pooled connection is probed with Who-am-I before reuse and
replaced when the server dropped it. ldap3 blocks, so every call runs in a worker thread, and a
connection is used by one thread at a time. Errors are classified by LDAP result code; see
``docs/targets/ldap.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from targets.base import (
    Password,
    PermanentError,
    TargetError,
    TargetSettings,
    TransientError,
    read_secret_file,
)
from targets.hashing import hash_password_async
from targets.ldap_pool import (
    CONNECTION_LOST,
    ConnectionPool,
    Endpoint,
    close_quietly,
    connection_error_text,
    ldap3,
    ldap_errors,
    tls_context,
)
from targets.redaction import quotable

LdapHash = Literal["ssha512", "sha512_crypt", "argon2id"]

# What the registry's hash gets in front of it to become a userPassword value slapd, 389-DS and
# others recognise; passlib's ssha512 already carries its {SSHA512} prefix.
_STORAGE_PREFIX: Final[dict[LdapHash, str]] = {
    "ssha512": "",
    "sha512_crypt": "{CRYPT}",
    "argon2id": "{ARGON2}",
}
_SCOPES: Final = {"subtree": ldap3.SUBTREE, "one": ldap3.LEVEL}
# Result codes after which the same request may well succeed later: timeLimitExceeded,
# adminLimitExceeded, busy, unavailable. Every other refusal is about this entry or this value.
_TRANSIENT_RESULTS: Final = frozenset({3, 11, 51, 52})
_MAX_SERVER_TEXT: Final = 300
_WITHHELD: Final = "(server text withheld: it repeats part of a password)"


def _endpoint(url: str) -> tuple[str, int, bool]:
    """``(host, port, ldaps)`` of an ``ldaps://`` or ``ldap://`` URL; ValueError otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ldap", "ldaps"):
        raise ValueError("must start with ldaps:// or ldap://")
    if not parts.hostname:
        raise ValueError("needs a host name")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("takes only scheme, host and port (no DN, user or query)")
    port = parts.port  # ValueError for a bad port
    return parts.hostname, port or (636 if scheme == "ldaps" else 389), scheme == "ldaps"


def _check_dn(value: str) -> None:
    try:
        ldap3.utils.dn.parse_dn(value)
    except ldap_errors.LDAPInvalidDnError as exc:
        raise ValueError(f"not a valid DN: {exc}") from None


class LdapSettings(TargetSettings):
    """Server, service account, how the entry is found and how the password is written."""

    # A bind password may be in the input; keep raw input out of validation error messages.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str
    start_tls: bool = False
    allow_insecure: bool = False
    ca_file: Path | None = None
    bind_dn: str
    bind_password: SecretStr | None = None
    bind_password_file: Path | None = None
    dn_template: str | None = None
    search_base: str | None = None
    search_filter: str | None = None
    search_scope: Literal["subtree", "one"] = "subtree"
    mode: Literal["password_modify", "replace"] = "password_modify"
    hash: LdapHash | None = None
    verify_bind: bool = False
    timeout: float = Field(default=5.0, gt=0)
    pool_size: int = Field(default=2, ge=1, le=32)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _endpoint(value)
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                tls_context(value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load CA certificates from {value}: {exc}") from None
        return value

    @field_validator("bind_password_file")
    @classmethod
    def _bind_password_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_secret_file(value, what="bind_password_file")
        return value

    @field_validator("bind_dn", "search_base")
    @classmethod
    def _dn(cls, value: str | None) -> str | None:
        if value is not None:
            _check_dn(value)
        return value

    @field_validator("dn_template")
    @classmethod
    def _dn_template(cls, value: str | None) -> str | None:
        if value is not None:
            if "{account}" not in value:
                raise ValueError("must contain {account}")
            _check_dn(value.replace("{account}", "x"))
        return value

    @field_validator("search_filter")
    @classmethod
    def _search_filter(cls, value: str | None) -> str | None:
        if value is not None:
            if "{account}" not in value:
                raise ValueError("must contain {account}")
            if not (value.startswith("(") and value.endswith(")")):
                raise ValueError("must be a parenthesised LDAP filter, e.g. (uid={account})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _, _, ldaps = _endpoint(self.url)
        if ldaps and self.start_tls:
            raise ValueError("start_tls: ldaps:// is TLS already; start_tls is for ldap:// URLs")
        if not ldaps and not self.start_tls and not self.allow_insecure:
            raise ValueError(
                "allow_insecure: an ldap:// URL without start_tls sends the service account's "
                "and users' passwords in clear text; use ldaps://, set start_tls = true, or set "
                "allow_insecure = true"
            )
        if (self.bind_password is None) == (self.bind_password_file is None):
            raise ValueError(
                "bind_password_file: set exactly one of bind_password_file and bind_password"
            )
        by_search = self.search_base is not None or self.search_filter is not None
        if (self.dn_template is not None) == by_search:
            raise ValueError(
                "dn_template: set either dn_template, or search_base and search_filter"
            )
        if by_search and (self.search_base is None or self.search_filter is None):
            raise ValueError("search_filter: search_base and search_filter go together")
        if self.mode == "replace" and self.hash is None:
            raise ValueError(
                'hash: mode = "replace" needs hash = "ssha512", "sha512_crypt" or "argon2id"'
            )
        if self.mode == "password_modify" and self.hash is not None:
            raise ValueError(
                'hash: only used with mode = "replace"; the server hashes password_modify'
            )
        return self


def server_text(message: object, *secrets: bytes) -> str:
    """The server's diagnostic message, fit for an error reason: one bounded line, withheld
    entirely if it repeats any part of ``secrets`` (some password-check modules echo the value),
    by :mod:`targets.redaction`'s rule."""
    passwords = [secret.decode("utf-8", errors="replace") for secret in secrets]
    quoted = quotable(str(message or ""), passwords, _MAX_SERVER_TEXT)
    return _WITHHELD if quoted is None else quoted


def _result_error(exc: Any, action: str, *secrets: bytes) -> TransientError | PermanentError:
    """The adapter error for an LDAP result code the server sent back."""
    code, name = exc.result, exc.description or "error"
    text = server_text(exc.message, *secrets)
    reason = f"{action}: {name} ({code})" + (f": {text}" if text else "")
    return TransientError(reason) if code in _TRANSIENT_RESULTS else PermanentError(reason)


def _utf8(password: Password) -> bytes:
    try:
        raw = password.reveal().encode("utf-8")
    except UnicodeEncodeError:
        # ``from None``: the UnicodeEncodeError carries the whole plaintext in ``.object``.
        raise PermanentError("password is not valid Unicode (lone surrogate)") from None
    if not raw:
        # A simple bind with an empty password is an anonymous bind (RFC 4513 5.1.2).
        raise PermanentError("an empty password cannot be set in LDAP")
    return raw


def _raise_for_result(connection: Any) -> None:
    """Raise ldap3's exception for a result code ldap3 itself does not raise for (referral,
    timeLimitExceeded), so the caller's translation classifies it."""
    result = connection.result or {}
    if result.get("result", 0) not in (0, 4):  # success, sizeLimitExceeded
        raise ldap_errors.LDAPOperationResult(
            result=result["result"],
            description=result.get("description"),
            dn=result.get("dn"),
            message=result.get("message"),
        )


def _search_dns(connection: Any, base: str, search_filter: str, scope: Any) -> list[str]:
    """DNs of (at most two) entries matching ``search_filter``; blocking."""
    connection.search(
        base, search_filter, search_scope=scope, attributes=ldap3.NO_ATTRIBUTES, size_limit=2
    )
    _raise_for_result(connection)
    return [e["dn"] for e in connection.response or () if e.get("type") == "searchResEntry"]


def _template_parent(template: str) -> str:
    """The DN under which ``dn_template``'s entries live ('' for a one-RDN template)."""
    rdns: list[str] = ldap3.utils.dn.to_dn(template)
    index = next(i for i, rdn in enumerate(rdns) if "{account}" in rdn)
    return ",".join(rdns[index + 1 :])


class LdapTarget:
    """Sets passwords in an LDAP directory (OpenLDAP, 389-DS, ...) as a service account."""

    settings_model: ClassVar[type[TargetSettings]] = LdapSettings

    def __init__(self, name: str, settings: LdapSettings) -> None:
        self.name = name
        self._settings = settings
        host, port, ldaps = _endpoint(settings.url)
        secured = ldaps or settings.start_tls
        self._endpoint = Endpoint(
            host=host,
            port=port,
            ldaps=ldaps,
            start_tls=settings.start_tls,
            tls=tls_context(settings.ca_file) if secured else None,
            timeout=settings.timeout,
        )
        self._pool = ConnectionPool(self._connect_service, settings.pool_size)

    def __repr__(self) -> str:
        return f"LdapTarget(name={self.name!r}, url={self._settings.url!r})"

    async def set_password(self, account: str, password: Password) -> None:
        """Find ``account``'s entry and set its password (unless ``verify_bind`` finds it set)."""
        settings = self._settings
        raw = _utf8(password)
        dn = await self._find(account)
        if settings.verify_bind and await self._bind_works(dn, raw):
            return
        if settings.hash is not None:  # mode = "replace"
            hashed = await hash_password_async(settings.hash, password)
            change = {
                "userPassword": [(ldap3.MODIFY_REPLACE, [_STORAGE_PREFIX[settings.hash] + hashed])]
            }

            def replace(connection: Any) -> None:
                connection.modify(dn, change)
                _raise_for_result(connection)

            with self._translated(f"replace userPassword of {dn}", raw):
                await self._pool.run(replace)
        else:
            with self._translated(f"password modify of {dn}", raw):
                await self._pool.run(
                    lambda c: c.extend.standard.modify_password(user=dn, new_password=raw)
                )

    async def check(self) -> None:
        """Connect, bind as the service account and read the base entry; changes nothing."""
        settings = self._settings
        if settings.search_base is not None:
            base = settings.search_base
        else:
            assert settings.dn_template is not None
            base = _template_parent(settings.dn_template)
        with self._translated(f"read {base or 'the root DSE'}"):
            found = await self._pool.run(
                lambda c: _search_dns(c, base, "(objectClass=*)", ldap3.BASE)
            )
        if not found:
            raise PermanentError(f"base entry {base} is not visible to the service account")

    async def close(self) -> None:
        """Unbind the pooled connections; a later call opens new ones."""
        await self._pool.close()

    async def _find(self, account: str) -> str:
        settings = self._settings
        if not account or "\0" in account:
            raise PermanentError("account name must be non-empty and contain no NUL")
        if settings.dn_template is not None:
            return settings.dn_template.replace("{account}", ldap3.utils.dn.escape_rdn(account))
        assert settings.search_base is not None
        assert settings.search_filter is not None
        base, scope = settings.search_base, _SCOPES[settings.search_scope]
        search_filter = settings.search_filter.replace(
            "{account}", ldap3.utils.conv.escape_filter_chars(account)
        )
        with self._translated(f"search for {search_filter} under {base}"):
            dns = await self._pool.run(lambda c: _search_dns(c, base, search_filter, scope))
        if not dns:
            raise PermanentError(f"no entry under {base} matches {search_filter}")
        if len(dns) > 1:
            raise PermanentError(
                f"more than one entry under {base} matches {search_filter}; "
                "search_filter must find exactly one"
            )
        return dns[0]

    async def _bind_works(self, dn: str, raw: bytes) -> bool:
        with self._translated(f"verify bind as {dn}", raw):
            return await asyncio.to_thread(self._try_bind, dn, raw)

    @contextlib.contextmanager
    def _translated(self, action: str, *secrets: bytes) -> Iterator[None]:
        """Turn ldap3 and socket errors into TransientError or PermanentError."""
        try:
            yield
        except TargetError:
            raise
        except ldap_errors.LDAPOperationResult as exc:
            error = _result_error(exc, action, *secrets)
            raise error from (None if _WITHHELD in error.reason else exc)
        except CONNECTION_LOST as exc:
            text = server_text(connection_error_text(exc), *secrets)
            where = f"{self._endpoint.host}:{self._endpoint.port}"
            raise TransientError(f"{action}: connection to {where} failed: {text}") from exc
        except ldap_errors.LDAPExceptionError as exc:
            text = server_text(exc, *secrets)
            raise PermanentError(f"{action}: {type(exc).__name__}: {text}") from exc

    # Blocking: worker threads only.

    def _connect_service(self) -> Any:
        """A pooled connection bound as the service account.

        Any refusal of that bind (wrong password, locked or missing account) is an operator's
        to fix, not this change's fault: it is transient, so queued changes go through once
        the credential is fixed. The password file is re-read, so a rotated secret is used.
        """
        settings = self._settings
        if settings.bind_password is not None:
            secret = settings.bind_password.get_secret_value()
        else:
            assert settings.bind_password_file is not None
            try:
                secret = read_secret_file(settings.bind_password_file, what="bind_password_file")
            except ValueError as exc:
                raise TransientError(str(exc)) from None
        raw = secret.encode("utf-8")
        try:
            return self._endpoint.open(settings.bind_dn, raw)
        except ldap_errors.LDAPOperationResult as exc:
            error = _result_error(exc, f"service account bind as {settings.bind_dn} refused", raw)
            raise TransientError(f"{error.reason} (check bind_dn and the bind password)") from None

    def _try_bind(self, dn: str, raw: bytes) -> bool:
        """Whether ``dn`` can bind with ``raw`` already; any refusal means "not yet"."""
        try:
            connection = self._endpoint.open(dn, raw)
        except ldap_errors.LDAPOperationResult:
            return False
        close_quietly(connection)
        return True
