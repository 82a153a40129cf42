"""An application's own SQL user table: one configured statement stores a fresh hash.

The statement uses the named placeholders ``:account`` and ``:hash``, e.g.
``UPDATE users SET pw_hash = :hash WHERE login = :account``; they become ``$1``/``$2`` for
PostgreSQL (asyncpg), ``?`` for SQLite (aiosqlite) and ``%s`` for MySQL/MariaDB (aiomysql, an
optional dependency imported only for ``mysql://`` DSNs). The DSN is ``postgresql://...``,
``mysql://user:password@host:3306/db`` (or ``mariadb://``, options ``ssl``, ``ssl_ca`` and
``unix_socket``) or ``sqlite:////absolute/path/app.db`` (SQLAlchemy's form: three slashes, then
an absolute path). A statement that matches no row means the account does not exist there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import re
import sqlite3
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Self
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiosqlite

# asyncpg ships no type information; the ignore stays harmless once pyproject overrides it.
import asyncpg  # type: ignore[import-untyped, unused-ignore]
from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from targets.base import (
    Password,
    PermanentError,
    TargetError,
    TargetSettings,
    TransientError,
    read_secret_file,
)
from targets.hashing import HashScheme, hash_password_async

Dialect = Literal["postgresql", "sqlite", "mysql"]

_PLACEHOLDERS: Final = ("account", "hash")
# Skips string literals, quoted identifiers, comments and PostgreSQL's ``::`` casts, so only real
# placeholders are seen; positional ones would clash with the numbering generated here.
_TOKEN: Final = re.compile(
    r"""'(?:[^']|'')*' | "(?:[^"]|"")*" | `(?:[^`]|``)*` | --[^\n]* | /\*.*?\*/ | ::
      | :(?P<name>[A-Za-z_][A-Za-z0-9_]*) | (?P<positional>\$\d+|\?)""",
    re.VERBOSE | re.DOTALL,
)
# MySQL's lexer: backslash escapes inside quotes, ``#`` comments, ``-- `` only before a space.
# The driver formats the statement with ``%``, so every literal ``%`` is doubled (``percent``).
_TOKEN_MYSQL: Final = re.compile(
    r"""'(?:[^'\\]|''|\\.)*' | "(?:[^"\\]|""|\\.)*" | `(?:[^`]|``)*` | (?:--[ \t]|\#)[^\n]*
      | /\*.*?\*/ | :: | :(?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<positional>\?|%s|%\([A-Za-z0-9_]*\)s) | (?P<percent>%)""",
    re.VERBOSE | re.DOTALL,
)
# asyncpg errors after which the same statement may well succeed later. Class 28 (authentication)
# is here too: once an operator fixes the credential, the queued changes go through.
_TRANSIENT_PG: Final = (
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.OperatorInterventionError,  # class 57: shutdown, starting up, statement timeout
    asyncpg.TransactionRollbackError,  # class 40: serialization failure, deadlock
    asyncpg.LockNotAvailableError,
    asyncpg.InvalidAuthorizationSpecificationError,
)
_TRANSIENT_SQLITE_CODES: Final = frozenset({5, 6, 10, 13})  # BUSY, LOCKED, IOERR, FULL

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


def compile_query(query: str, dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """``query`` in ``dialect``'s placeholder style, and the placeholder names in bind order.

    Raises ValueError unless ``query`` uses both ``:account`` and ``:hash`` and nothing else.
    """
    order: list[str] = []
    mysql = dialect == "mysql"

    def substitute(match: re.Match[str]) -> str:
        if match["positional"]:
            raise ValueError(f"use :account and :hash, not positional {match['positional']}")
        name = match["name"]
        if name is None:
            return match[0].replace("%", "%%") if mysql else match[0]
        if name not in _PLACEHOLDERS:
            raise ValueError(f"unknown placeholder :{name}; only :account and :hash exist")
        order.append(name)
        if dialect == "postgresql":
            return f"${_PLACEHOLDERS.index(name) + 1}"
        return "%s" if mysql else "?"

    compiled = (_TOKEN_MYSQL if mysql else _TOKEN).sub(substitute, query)
    missing = [f":{name}" for name in _PLACEHOLDERS if name not in order]
    if missing:
        raise ValueError(f"must use placeholder {' and '.join(missing)}")
    return compiled, (_PLACEHOLDERS if dialect == "postgresql" else tuple(order))


def dialect_of(dsn: str) -> Dialect:
    """Which database ``dsn`` names; ValueError for anything not supported or malformed."""
    scheme = dsn.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme in ("mysql", "mariadb"):
        _mysql_dsn(dsn)
        if importlib.util.find_spec("aiomysql") is None:
            raise ValueError("a mysql DSN needs the aiomysql package: pip install aiomysql")
        return "mysql"
    if scheme == "sqlite":
        if not _sqlite_path(dsn).startswith("/"):
            raise ValueError("a sqlite DSN needs an absolute path: sqlite:////path/to/app.db")
        return "sqlite"
    # Never echo the DSN: it may carry a password.
    raise ValueError("DSN must start with postgresql://, mysql:// or sqlite:///")


def _sqlite_path(dsn: str) -> str:
    return unquote(dsn.partition(":///")[2])


@dataclass(frozen=True, slots=True)
class _MysqlDsn:
    """The parts of a ``mysql://`` DSN; ``tls`` is set by ``?ssl=true`` or ``?ssl_ca=``."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str | None
    tls: bool
    ssl_ca: str | None
    unix_socket: str | None


def _mysql_dsn(dsn: str) -> _MysqlDsn:
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
    return _MysqlDsn(
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        host=parts.hostname or "localhost",
        port=port,
        database=database,
        tls=tls,
        ssl_ca=ssl_ca,
        unix_socket=options.get("unix_socket") or None,
    )


class SqlSettings(TargetSettings):
    """Database, statement and hash scheme of one SQL target. ``timeout`` is in seconds."""

    # The DSN may carry a password; keep raw input out of validation error messages.
    model_config = ConfigDict(hide_input_in_errors=True)

    dsn: SecretStr | None = None
    dsn_file: Path | None = None
    query: str
    hash: HashScheme = "argon2id"
    pool_size: int = Field(default=4, ge=1, le=100)
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("dsn")
    @classmethod
    def _dsn_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            dialect_of(value.get_secret_value())
        return value

    @field_validator("dsn_file")
    @classmethod
    def _dsn_file_scheme(cls, value: Path | None) -> Path | None:
        if value is not None:
            dialect_of(read_secret_file(value, what="dsn_file").strip())
        return value

    @field_validator("query")
    @classmethod
    def _query_placeholders(cls, value: str, info: ValidationInfo) -> str:
        # Placeholders are found with the DSN's own lexer (MySQL: backslash escapes, # comments);
        # with no valid DSN to go by, PostgreSQL's.
        dialect: Dialect = "postgresql"
        with contextlib.suppress(OSError, ValueError):
            dsn, dsn_file = info.data.get("dsn"), info.data.get("dsn_file")
            if isinstance(dsn, SecretStr):
                dialect = dialect_of(dsn.get_secret_value())
            elif isinstance(dsn_file, Path):
                dialect = dialect_of(read_secret_file(dsn_file, what="dsn_file").strip())
        compile_query(value, dialect)
        return value

    @model_validator(mode="after")
    def _one_dsn_source(self) -> Self:
        if (self.dsn is None) == (self.dsn_file is None):
            raise ValueError("set exactly one of dsn and dsn_file")
        return self


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


class _MysqlPool:
    """Up to ``pool_size`` aiomysql connections, opened on demand.

    A connection on which anything failed or timed out is closed, never reused: after a
    cancelled read its protocol state is unknown. An idle one is pinged before reuse and
    replaced if the server dropped it, so the server's ``wait_timeout`` cannot fail a delivery.
    """

    def __init__(self, dsn: _MysqlDsn, settings: SqlSettings) -> None:
        self._dsn = dsn
        self._ssl = ssl.create_default_context(cafile=dsn.ssl_ca) if dsn.tls else None
        self._timeout = settings.timeout
        self._slots = asyncio.Semaphore(settings.pool_size)
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


async def _mysql_run(conn: Any, sql: str, args: list[str] | None) -> int:
    """Run ``sql`` on ``conn``; the rows it matched (FOUND_ROWS), -1 when the server has none.

    The cursor is closed only after success: on failure the pool drops the whole connection,
    and a cursor cleanup raising over a cancellation would hide the timeout.
    """
    cursor = await conn.cursor()
    await cursor.execute(sql, args)
    count = int(cursor.rowcount)
    await cursor.close()
    return count


class _Connection:
    """One open database: an asyncpg or aiomysql pool, or an aiosqlite connection."""

    def __init__(self, dsn: str, settings: SqlSettings) -> None:
        self.dialect = dialect_of(dsn)
        self.sql, self._order = compile_query(settings.query, self.dialect)
        self._dsn = dsn
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._mysql: _MysqlPool | None = None
        self._sqlite: aiosqlite.Connection | None = None
        self._sqlite_lock = asyncio.Lock()

    async def open(self) -> None:
        if self.dialect == "postgresql":
            # min_size=0: nothing connects here, so a down server fails the first call, not this.
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self._settings.pool_size,
                timeout=self._settings.timeout,
                command_timeout=self._settings.timeout,
            )
        elif self.dialect == "mysql":
            self._mysql = _MysqlPool(_mysql_dsn(self._dsn), self._settings)
        else:
            # mode=rw: a wrong path must fail, not silently create an empty database.
            uri = f"file:{quote(_sqlite_path(self._dsn))}?mode=rw"
            self._sqlite = await aiosqlite.connect(uri, uri=True, timeout=self._settings.timeout)

    async def execute(self, values: dict[str, str]) -> int | None:
        """Run the statement; the number of rows it changed (MySQL: matched), when known."""
        args = [values[name] for name in self._order]
        if self._pool is not None:
            async with asyncio.timeout(self._settings.timeout):
                status: str = await self._pool.execute(self.sql, *args)
            tail = status.rpartition(" ")[2]  # "UPDATE 1", "INSERT 0 1"
            return int(tail) if tail.isdigit() else None
        if self._mysql is not None:
            async with asyncio.timeout(self._settings.timeout), self._mysql.connection() as conn:
                count = await _mysql_run(conn, self.sql, args)
            return count if count >= 0 else None
        assert self._sqlite is not None
        async with self._sqlite_lock:
            try:
                cursor = await self._sqlite.execute(self.sql, args)
                count = cursor.rowcount
                await cursor.close()
                await self._sqlite.commit()
            except Exception:
                await self._sqlite.rollback()
                raise
        return count if count >= 0 else None

    async def select_one(self) -> None:
        if self._pool is not None:
            async with asyncio.timeout(self._settings.timeout):
                await self._pool.fetchval("SELECT 1")
            return
        if self._mysql is not None:
            async with asyncio.timeout(self._settings.timeout), self._mysql.connection() as conn:
                await _mysql_run(conn, "SELECT 1", None)
            return
        assert self._sqlite is not None
        async with self._sqlite_lock:
            await (await self._sqlite.execute("SELECT 1")).close()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._mysql is not None:
            await self._mysql.close()
        if self._sqlite is not None:
            await self._sqlite.close()


def _mysql_error_type() -> type[Exception] | None:
    """PyMySQL's root error, if a MySQL connection was ever made (else none can be raised)."""
    module = sys.modules.get("pymysql.err")
    return None if module is None else module.MySQLError


def _driver_errors() -> tuple[type[Exception], ...]:
    errors: tuple[type[Exception], ...] = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        sqlite3.Error,
        OSError,
    )
    mysql_error = _mysql_error_type()
    return errors if mysql_error is None else (*errors, mysql_error)


def _translate_mysql(exc: Exception) -> TargetError:
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


def _translate(exc: Exception) -> TargetError:
    """The adapter error for a library error; never its message, which may quote parameters."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return TransientError("database did not answer in time")
    if isinstance(exc, OSError):
        return TransientError(f"cannot reach database: {name}")
    if isinstance(exc, _TRANSIENT_PG):
        return TransientError(f"database unavailable: {name} (SQLSTATE {exc.sqlstate})")
    if isinstance(exc, asyncpg.PostgresError):
        return PermanentError(f"database refused the statement: {name} (SQLSTATE {exc.sqlstate})")
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        label = f"{name} ({getattr(exc, 'sqlite_errorname', 'unknown')})"
        if code is not None and code & 0xFF in _TRANSIENT_SQLITE_CODES:
            return TransientError(f"database unavailable: {label}")
        return PermanentError(f"database error: {label}")
    mysql_error = _mysql_error_type()
    if mysql_error is not None and isinstance(exc, mysql_error):
        return _translate_mysql(exc)
    return PermanentError(f"database client error: {name}")


@contextlib.asynccontextmanager
async def _translated_errors() -> AsyncIterator[None]:
    """Turn asyncpg, PyMySQL, sqlite3 and socket errors into TransientError or PermanentError."""
    try:
        yield
    except _driver_errors() as exc:
        raise _translate(exc) from exc


class SqlTarget:
    """Stores a hash of each new password through one SQL statement (PostgreSQL, MySQL, SQLite)."""

    settings_model: ClassVar[type[TargetSettings]] = SqlSettings

    def __init__(self, name: str, settings: SqlSettings) -> None:
        self.name = name
        self._settings = settings
        self._connection: _Connection | None = None
        self._connect_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqlTarget(name={self.name!r})"

    async def _connected(self) -> _Connection:
        async with self._connect_lock:
            if self._connection is None:
                try:
                    connection = _Connection(await self._dsn(), self._settings)
                except ValueError as exc:  # the query does not fit a dsn_file's new dialect
                    raise PermanentError(f"query: {exc}") from None
                await connection.open()
                self._connection = connection
            return self._connection

    async def _dsn(self) -> str:
        settings = self._settings
        if settings.dsn is not None:
            return settings.dsn.get_secret_value()
        assert settings.dsn_file is not None
        # Read on first use as well as at load, so a rotated credential file is picked up.
        try:
            text = await asyncio.to_thread(read_secret_file, settings.dsn_file, what="dsn_file")
            dialect_of(text.strip())
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        return text.strip()

    async def set_password(self, account: str, password: Password) -> None:
        """Hash ``password`` off the event loop and store it for ``account``."""
        hashed = await hash_password_async(self._settings.hash, password)
        async with _translated_errors():
            connection = await self._connected()
            changed = await connection.execute({"account": account, "hash": hashed})
        if changed == 0:
            raise PermanentError("account not found")

    async def check(self) -> None:
        """Connect and run ``SELECT 1``; changes nothing."""
        async with _translated_errors():
            await (await self._connected()).select_one()

    async def close(self) -> None:
        """Close the pool or connection, if one was opened."""
        async with self._connect_lock:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None
