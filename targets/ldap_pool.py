"""ldap3 connections for the ldap adapter: TLS checked by ``ssl``, pooled, run in worker threads.

ldap3 blocks, so every call runs in a worker thread, and a connection is used by one thread at
a time. A pooled connection is probed with Who-am-I (RFC 4532) before it is reused and replaced
when the server dropped it (restart, idle timeout), so a stale connection never fails a change.
This module is also the one place ldap3 is imported; :mod:`targets.ldap` takes it from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

with warnings.catch_warnings():
    # ldap3 2.9.1 imports pyasn1's deprecated tagMap/typeMap aliases (pyasn1 >= 0.5); harmless,
    # and it would otherwise fail any test suite that turns warnings into errors.
    warnings.filterwarnings("ignore", r"(tag|type)Map is deprecated", DeprecationWarning)
    import ldap3  # type: ignore[import-untyped, unused-ignore]
    from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "CONNECTION_LOST",
    "ConnectionPool",
    "Endpoint",
    "close_quietly",
    "connection_error_text",
    "ldap3",
    "ldap_errors",
    "tls_context",
]

T = TypeVar("T")

# The connection is gone or unusable: it leaves the pool, and the error is transient.
CONNECTION_LOST: Final = (
    ldap_errors.LDAPCommunicationError,
    ldap_errors.LDAPStartTLSError,
    ldap_errors.LDAPResponseTimeoutError,
    ldap_errors.LDAPCertificateError,
    OSError,
)
_TUPLE_WRAPPING: Final = re.compile(r"""^(?:\(['"])+|(?:['"],?\))+$""")


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificate and host-name checks by ``ssl`` itself, TLS 1.2 or later; the system's
    CA store unless ``ca_file`` names a bundle."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def connection_error_text(exc: BaseException) -> str:
    """ldap3 re-raises socket errors as ``type(e)(str(e))``, nesting tuple reprs; undo that."""
    return _TUPLE_WRAPPING.sub("", str(exc)).replace("\\'", "'")


class _VerifiedTls(ldap3.Tls):  # type: ignore[misc]  # ldap3 is untyped
    """ldap3's TLS hook, with the handshake, chain and host-name checks done by ``ssl``.

    ldap3 switches the context's own host-name check off and calls ``ssl.match_hostname``,
    deprecated since Python 3.7 and gone in 3.12; this wraps the socket with a normal context.
    """

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._host = host

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._host,
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect; ``tls`` is None only for plain LDAP (``allow_insecure``)."""

    host: str
    port: int
    ldaps: bool
    start_tls: bool
    tls: ssl.SSLContext | None
    timeout: float

    def open(self, user: str, password: bytes) -> Any:
        """A connection, secured and bound as ``user`` (blocking; ldap3 errors propagate)."""
        tls = _VerifiedTls(self.tls, self.host) if self.tls is not None else None
        server = ldap3.Server(
            self.host,
            port=self.port,
            use_ssl=self.ldaps,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self.timeout,
        )
        connection = ldap3.Connection(
            server,
            user=user,
            password=password,  # bytes: sent as is, no SASLprep, like ldapwhoami and most apps
            raise_exceptions=True,
            auto_referrals=False,
            receive_timeout=math.ceil(self.timeout),  # ldap3 packs it as an integer on Linux
        )
        try:
            connection.open(read_server_info=False)
            if self.start_tls:
                connection.start_tls(read_server_info=False)
            if self.tls is not None and not isinstance(connection.socket, ssl.SSLSocket):
                # Never let a password go out in clear because ldap3 skipped TLS quietly.
                raise ldap_errors.LDAPStartTLSError("TLS was not established")
            connection.bind(read_server_info=False)
        except BaseException:
            close_quietly(connection)
            raise
        return connection


def close_quietly(connection: Any) -> None:
    """Unbind if the session is up, and close the socket even when ldap3 considers it closed
    (after a connection loss ldap3 marks the connection closed but leaves the socket open)."""
    with contextlib.suppress(Exception):
        if not connection.closed:
            connection.unbind()
    sock = getattr(connection, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
        connection.socket = None


def _alive(connection: Any) -> bool:
    """Whether a pooled connection still answers a Who-am-I."""
    if connection.closed:
        return False
    try:
        connection.extend.standard.who_am_i()
    except ldap_errors.LDAPOperationResult:
        return True  # an answer, even a refusal, means the session is up
    except (*CONNECTION_LOST, ldap_errors.LDAPExceptionError):
        return False
    return True


class _Slot:
    """One pooled connection, used by one worker thread at a time."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self.connection: Any = None

    def run(self, operation: Callable[[Any], T]) -> T:
        if self.connection is not None and not _alive(self.connection):
            self.discard()
        if self.connection is None:
            self.connection = self._connect()
        try:
            return operation(self.connection)
        except CONNECTION_LOST:
            self.discard()
            raise

    def discard(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            close_quietly(connection)


class ConnectionPool:
    """At most ``size`` connections made by ``connect``, each lent to one thread at a time.

    The most recently used connection is lent first, so a quiet target keeps one warm
    connection. A slot returns to the pool only when its thread has finished, even if the
    awaiting task was cancelled (a delivery attempt timing out), so no connection is shared.
    """

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._slots = [_Slot(connect) for _ in range(size)]
        self._free: asyncio.LifoQueue[_Slot] = asyncio.LifoQueue()
        for slot in self._slots:
            self._free.put_nowait(slot)

    async def run(self, operation: Callable[[Any], T]) -> T:
        """``operation(connection)`` in a worker thread, on a live pooled connection."""
        slot = await self._free.get()
        work = asyncio.ensure_future(asyncio.to_thread(slot.run, operation))
        work.add_done_callback(lambda _: self._free.put_nowait(slot))
        return await asyncio.shield(work)

    async def close(self) -> None:
        """Wait for running calls, then unbind every connection; later calls reconnect."""
        held = [await self._free.get() for _ in self._slots]

        def discard_all() -> None:
            for slot in held:
                slot.discard()

        try:
            await asyncio.to_thread(discard_all)
        finally:
            for slot in held:
                self._free.put_nowait(slot)
