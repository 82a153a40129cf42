"""MySQL and MariaDB for the ``sql`` adapter: the DSN, a small aiomysql pool that enforces TLS
when asked, and error classification by server error number.

aiomysql is optional: nothing here imports it until a ``mysql://`` target connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from targets.base import PermanentError, TargetError, TransientError

_MYSQL_DEFAULT_PORT: Final = 3306
_MYSQL_OPTIONS: Final = ("ssl", "ssl_ca", "unix_socket")
_CLIENT_FOUND_ROWS: Final = 2  # pymysql.constants.CLIENT.FOUND_ROWS: count matched, not changed
_CR_SSL_CONNECTION_ERROR: Final = 2026
# MySQL/MariaDB error numbers, like PostgreSQL's class 28 above: the login was refused
# (wrong password, no such user, host not allowed, account locked or password expired), so the
# changes wait until an operator fixes the DSN or the account.
_MYSQL_LOGIN_REFUSED: Final = frozenset({1044, 1045, 1130, 1251, 1698, 1820, 1862, 3118, 4151})
_MYSQL_UNREACHABLE: Final = frozenset({2002, 2003, 2005, 2006, 2013, 2055})
_MYSQL_TRANSIENT: Final = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1129,  # host blocked after too many connection errors
        1152,  # connection aborted
        *range(1158, 1162),  # network read/write error or timeout
        1203,  # max_user_connections
        1205,  # lock wait timeout
        1213,  # deadlock
        1226,  # user resource limit
        1317,  # query interrupted
        1927,  # MariaDB: connection killed
        1969,  # MariaDB: max_statement_time exceeded
        3024,  # MySQL: max_execution_time exceeded
        4031,  # MySQL: disconnected by the server for inactivity
    }
)


@dataclass(frozen=True, slots=True)
class MysqlDsn:
    """The parts of a ``mysql://`` DSN; ``tls`` is set by ``?ssl=true`` or ``?ssl_ca=``."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str | None
    tls: bool
    ssl_ca: str | None
    unix_socket: str | None


def parse_mysql_dsn(dsn: str) -> MysqlDsn:
    """Parse ``mysql://user:password@host:port/db?ssl=true``; messages never quote the DSN."""
    parts = urlsplit(dsn)
    try:
        port = parts.port or _MYSQL_DEFAULT_PORT
    except ValueError:
        raise ValueError("the mysql DSN's port is not a number from 0 to 65535") from None
    if not parts.username:
        raise ValueError("a mysql DSN needs a user: mysql://user:password@host:3306/db")
    database = unquote(parts.path.removeprefix("/")) or None
    if database is not None and "/" in database:
        raise ValueError("the mysql DSN's path must be just the database name")
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        # An unknown option might be a TLS request spelled another way: refuse, never ignore.
        if key not in _MYSQL_OPTIONS:
            raise ValueError(
                f"unsupported mysql DSN option {key!r}; supported: {', '.join(_MYSQL_OPTIONS)}"
            )
        if key in options:
            raise ValueError(f"mysql DSN option {key!r} is given twice")
        options[key] = value
    ssl_ca = options.get("ssl_ca") or None
    if ssl_ca is not None and not Path(ssl_ca).is_file():
        raise ValueError("mysql DSN option ssl_ca does not name a readable file")
    flag = options.get("ssl", "").lower()
    if flag in ("true", "1", "yes", "on"):
        tls = True
    elif flag in ("false", "0", "no", "off"):
        if ssl_ca is not None:
            raise ValueError("mysql DSN options ssl=false and ssl_ca contradict each other")
        tls = False
    elif not flag:
        tls = ssl_ca is not None
    else:
        raise ValueError("mysql DSN option ssl must be true or false")
    return MysqlDsn(
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        host=parts.hostname or "localhost",
        port=port,
        database=database,
        tls=tls,
        ssl_ca=ssl_ca,
        unix_socket=options.get("unix_socket") or None,
    )


@functools.cache
def _mysql_connection_class() -> type[Any]:
    """aiomysql's Connection, made to refuse a server that does not offer TLS when TLS was asked.

    aiomysql (like PyMySQL before its ``ssl_required``) quietly logs in and talks in clear
    text when the server does not announce TLS. The check sits in the handshake, after the
    server's greeting and before anything of the login is sent; it uses aiomysql internals
    (``_request_authentication``, ``_ssl_context``), which the TLS test pins down.
    """
    import aiomysql  # type: ignore[import-untyped, unused-ignore]
    from pymysql.constants import CLIENT  # type: ignore[import-untyped, unused-ignore]
    from pymysql.err import OperationalError  # type: ignore[import-untyped, unused-ignore]

    class TlsEnforcingConnection(aiomysql.Connection):  # type: ignore[misc]
        async def _request_authentication(self) -> None:
            if self._ssl_context is not None and not self.server_capabilities & CLIENT.SSL:
                raise OperationalError(_CR_SSL_CONNECTION_ERROR, "server does not offer TLS")
            await super()._request_authentication()

    return TlsEnforcingConnection


class MysqlPool:
    """Up to ``pool_size`` aiomysql connections, opened on demand.

    A connection on which anything failed or timed out is closed, never reused: after a
    cancelled read its protocol state is unknown. An idle one is pinged before reuse and
    replaced if the server dropped it, so the server's ``wait_timeout`` cannot fail a delivery.
    """

    def __init__(self, dsn: MysqlDsn, *, timeout: float, pool_size: int) -> None:
        self._dsn = dsn
        self._ssl = ssl.create_default_context(cafile=dsn.ssl_ca) if dsn.tls else None
        self._timeout = timeout
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[Any] = []
        self._closed = False

    async def _connect(self) -> Any:
        dsn = self._dsn
        conn = _mysql_connection_class()(
            host=dsn.host,
            port=dsn.port,
            user=dsn.user,
            # aiomysql encodes the password as latin-1; the server compares UTF-8 bytes, and a
            # UnicodeEncodeError would carry the password in its ``object`` attribute.
            password=dsn.password.encode("utf-8").decode("latin-1"),
            db=dsn.database,
            unix_socket=dsn.unix_socket,
            charset="utf8mb4",
            autocommit=True,
            client_flag=_CLIENT_FOUND_ROWS,
            connect_timeout=self._timeout,
            ssl=self._ssl,
        )
        try:
            await conn._connect()
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection for one statement; closed instead of returned if anything failed."""
        async with self._slots:
            if self._closed:
                raise TransientError("the target is shutting down")
            conn = self._idle.pop() if self._idle else None
            if conn is not None:
                try:
                    await conn.ping(reconnect=False)
                except Exception:
                    conn.close()  # dropped by the server while idle: open a fresh one
                    conn = None
                except BaseException:
                    conn.close()
                    raise
            if conn is None:
                conn = await self._connect()
            try:
                yield conn
            except BaseException:
                conn.close()
                raise
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)

    async def close(self) -> None:
        """Say goodbye on idle connections; one still in use is closed when it comes back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.ensure_closed()
            except (OSError, TimeoutError):
                conn.close()


async def mysql_run(conn: Any, sql: str, args: list[str] | None) -> int:
    """Run ``sql`` on ``conn``; the rows it matched (FOUND_ROWS), -1 when the server has none.

    The cursor is closed only after success: on failure the pool drops the whole connection,
    and a cursor cleanup raising over a cancellation would hide the timeout.
    """
    cursor = await conn.cursor()
    await cursor.execute(sql, args)
    count = int(cursor.rowcount)
    await cursor.close()
    return count


def mysql_error_type() -> type[Exception] | None:
    """PyMySQL's root error, if a MySQL connection was ever made (else none can be raised)."""
    module = sys.modules.get("pymysql.err")
    return None if module is None else module.MySQLError


def translate_mysql_error(exc: Exception) -> TargetError:
    """Classify by error number; PyMySQL's class is coarse and its message may quote values."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    label = f"{type(exc).__name__} (MySQL error {code})"
    if code in _MYSQL_LOGIN_REFUSED:
        return TransientError(f"database refused the login, check the DSN's credentials: {label}")
    if code == _CR_SSL_CONNECTION_ERROR or isinstance(exc.__cause__, ssl.SSLError):
        return TransientError(f"TLS to the database failed: {label}")
    if code in _MYSQL_UNREACHABLE:
        return TransientError(f"cannot reach database: {label}")
    if code in _MYSQL_TRANSIENT:
        return TransientError(f"database unavailable: {label}")
    if code is None:
        # No server error number: the client lost track of the connection (InterfaceError).
        return TransientError(f"database connection failed: {type(exc).__name__}")
    return PermanentError(f"database refused the statement: {label}")
