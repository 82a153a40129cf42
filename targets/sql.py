"""An application's own SQL user table: one configured statement stores a fresh hash.

The statement uses the named placeholders ``:account`` and ``:hash``, e.g.
``UPDATE users SET pw_hash = :hash WHERE login = :account``; they become ``$1``/``$2`` for
PostgreSQL (asyncpg), ``?`` for SQLite (aiosqlite) and ``%s`` for MySQL/MariaDB (aiomysql); the
last two drivers are optional (extras ``sqlite`` and ``mysql``), imported only for their DSNs.
The DSN is ``postgresql://...``, ``mysql://user:password@host:3306/db`` (or ``mariadb://``,
options ``ssl``, ``ssl_ca`` and ``unix_socket``) or ``sqlite:////absolute/path/app.db``
(SQLAlchemy's form: three slashes, then an absolute path). A statement that matches no row
means the account does not exist there.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final, Literal, Self
from urllib.parse import quote, unquote

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
from targets.sql_mysql import (
    MysqlPool,
    mysql_error_type,
    mysql_run,
    parse_mysql_dsn,
    translate_mysql_error,
)

if TYPE_CHECKING:
    import aiosqlite

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
        parse_mysql_dsn(dsn)
        if importlib.util.find_spec("aiomysql") is None:
            raise ValueError("a mysql DSN needs the aiomysql package: pip install 'pcns[mysql]'")
        return "mysql"
    if scheme == "sqlite":
        if not _sqlite_path(dsn).startswith("/"):
            raise ValueError("a sqlite DSN needs an absolute path: sqlite:////path/to/app.db")
        if importlib.util.find_spec("aiosqlite") is None:
            raise ValueError("a sqlite DSN needs the aiosqlite package: pip install 'pcns[sqlite]'")
        return "sqlite"
    # Never echo the DSN: it may carry a password.
    raise ValueError("DSN must start with postgresql://, mysql:// or sqlite:///")


def _sqlite_path(dsn: str) -> str:
    return unquote(dsn.partition(":///")[2])


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


class _Connection:
    """One open database: an asyncpg or aiomysql pool, or an aiosqlite connection."""

    def __init__(self, dsn: str, settings: SqlSettings) -> None:
        self.dialect = dialect_of(dsn)
        self.sql, self._order = compile_query(settings.query, self.dialect)
        self._dsn = dsn
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._mysql: MysqlPool | None = None
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
            self._mysql = MysqlPool(
                parse_mysql_dsn(self._dsn),
                timeout=self._settings.timeout,
                pool_size=self._settings.pool_size,
            )
        else:
            import aiosqlite  # optional: only sqlite DSNs need it (checked by dialect_of)

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
                count = await mysql_run(conn, self.sql, args)
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
                await mysql_run(conn, "SELECT 1", None)
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


def _driver_errors() -> tuple[type[Exception], ...]:
    errors: tuple[type[Exception], ...] = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        sqlite3.Error,
        OSError,
    )
    mysql_error = mysql_error_type()
    return errors if mysql_error is None else (*errors, mysql_error)


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
    mysql_error = mysql_error_type()
    if mysql_error is not None and isinstance(exc, mysql_error):
        return translate_mysql_error(exc)
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
