"""An application's own SQL user table: one configured statement stores a fresh hash.

The statement uses the named placeholders ``:account`` and ``:hash``, e.g.
``UPDATE users SET pw_hash = :hash WHERE login = :account``; they become ``$1``/``$2`` for
PostgreSQL (asyncpg) and ``?`` for SQLite (aiosqlite). The DSN is ``postgresql://...`` or
``sqlite:////absolute/path/app.db`` (SQLAlchemy's form: three slashes, then an absolute path).
A statement that changes no row means the account does not exist there.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar, Final, Literal, Self
from urllib.parse import quote, unquote

import aiosqlite

# asyncpg ships no type information; the ignore stays harmless once pyproject overrides it.
import asyncpg  # type: ignore[import-untyped, unused-ignore]
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from targets.base import Password, PermanentError, TargetError, TargetSettings, TransientError
from targets.hashing import HashScheme, hash_password_async

Dialect = Literal["postgresql", "sqlite"]

_PLACEHOLDERS: Final = ("account", "hash")
# Skips string literals, quoted identifiers, comments and PostgreSQL's ``::`` casts, so only real
# placeholders are seen; positional ones would clash with the numbering generated here.
_TOKEN: Final = re.compile(
    r"""'(?:[^']|'')*' | "(?:[^"]|"")*" | --[^\n]* | /\*.*?\*/ | ::
      | :(?P<name>[A-Za-z_][A-Za-z0-9_]*) | (?P<positional>\$\d+|\?)""",
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

    def substitute(match: re.Match[str]) -> str:
        if match["positional"]:
            raise ValueError(f"use :account and :hash, not positional {match['positional']}")
        name = match["name"]
        if name is None:
            return match[0]
        if name not in _PLACEHOLDERS:
            raise ValueError(f"unknown placeholder :{name}; only :account and :hash exist")
        order.append(name)
        return f"${_PLACEHOLDERS.index(name) + 1}" if dialect == "postgresql" else "?"

    compiled = _TOKEN.sub(substitute, query)
    missing = [f":{name}" for name in _PLACEHOLDERS if name not in order]
    if missing:
        raise ValueError(f"must use placeholder {' and '.join(missing)}")
    return compiled, (_PLACEHOLDERS if dialect == "postgresql" else tuple(order))


def dialect_of(dsn: str) -> Dialect:
    """Which database ``dsn`` names; ValueError for anything not supported yet."""
    scheme = dsn.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme == "sqlite":
        if not _sqlite_path(dsn).startswith("/"):
            raise ValueError("a sqlite DSN needs an absolute path: sqlite:////path/to/app.db")
        return "sqlite"
    # Never echo the DSN: it may carry a password.
    raise ValueError("DSN must start with postgresql:// or sqlite:///")


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
            try:
                dsn = value.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror}") from None
            dialect_of(dsn)
        return value

    @field_validator("query")
    @classmethod
    def _query_placeholders(cls, value: str) -> str:
        compile_query(value, "postgresql")
        return value

    @model_validator(mode="after")
    def _one_dsn_source(self) -> Self:
        if (self.dsn is None) == (self.dsn_file is None):
            raise ValueError("set exactly one of dsn and dsn_file")
        return self


class _Connection:
    """One open database: an asyncpg pool, or an aiosqlite connection used one call at a time."""

    def __init__(self, dsn: str, settings: SqlSettings) -> None:
        self.dialect = dialect_of(dsn)
        self.sql, self._order = compile_query(settings.query, self.dialect)
        self._dsn = dsn
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
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
        else:
            # mode=rw: a wrong path must fail, not silently create an empty database.
            uri = f"file:{quote(_sqlite_path(self._dsn))}?mode=rw"
            self._sqlite = await aiosqlite.connect(uri, uri=True, timeout=self._settings.timeout)

    async def execute(self, values: dict[str, str]) -> int | None:
        """Run the statement; the number of rows it changed, when the database says."""
        args = [values[name] for name in self._order]
        if self._pool is not None:
            async with asyncio.timeout(self._settings.timeout):
                status: str = await self._pool.execute(self.sql, *args)
            tail = status.rpartition(" ")[2]  # "UPDATE 1", "INSERT 0 1"
            return int(tail) if tail.isdigit() else None
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
        assert self._sqlite is not None
        async with self._sqlite_lock:
            await (await self._sqlite.execute("SELECT 1")).close()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._sqlite is not None:
            await self._sqlite.close()


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
    return PermanentError(f"database client error: {name}")


@contextlib.asynccontextmanager
async def _translated_errors() -> AsyncIterator[None]:
    """Turn asyncpg, sqlite3 and socket errors into TransientError or PermanentError."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error, OSError) as exc:
        raise _translate(exc) from exc


class SqlTarget:
    """Stores a hash of each new password through one SQL statement (PostgreSQL or SQLite)."""

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
                connection = _Connection(await self._dsn(), self._settings)
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
            text = await asyncio.to_thread(settings.dsn_file.read_text, encoding="utf-8")
            dialect_of(text.strip())
        except OSError as exc:
            raise PermanentError(f"dsn_file: cannot read: {exc.strerror}") from exc
        except ValueError as exc:
            raise PermanentError(f"dsn_file: {exc}") from None
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
