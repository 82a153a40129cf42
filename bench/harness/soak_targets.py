"""The soak's target applications, each read back the way its owner would check it.

- ``wiki``: an Apache htpasswd file (bcrypt), checked with Apache's own ``htpasswd -v``.
- ``app``: a ``soak_users`` table in a scratch PostgreSQL database; ``mariadb``: the same table
  on a MariaDB server (optional). The stored hash is read back and checked with the target's
  own hashing (:func:`targets.hashing.verify_password`).

Each SQL target's statement also counts its writes (``writes = writes + 1``) and a trigger
appends every write (account, hash) to ``soak_writes``: the history of what the application
saw, in the order it saw it, so each write can be matched to the change it came from.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import asyncpg

from targets.base import Password
from targets.hashing import HashScheme, verify_password

HTPASSWD = shutil.which("htpasswd")
SQL_HASH: HashScheme = "ssha512"  # cheap to verify, so each logged write can be matched
STATEMENT = "UPDATE {users} SET pw = :hash, writes = writes + 1 WHERE login = :account"

_PG_SETUP = """
CREATE TABLE soak_users (login text PRIMARY KEY, pw text, writes integer NOT NULL DEFAULT 0);
CREATE TABLE soak_writes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                          login text NOT NULL, pw text);
CREATE FUNCTION soak_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_writes (login, pw) VALUES (NEW.login, NEW.pw);
    RETURN NULL;
END $$;
CREATE TRIGGER soak_log_write AFTER UPDATE ON soak_users
    FOR EACH ROW EXECUTE FUNCTION soak_log_write();
"""


@dataclass(frozen=True)
class WriteLog:
    """Every write (account, stored hash) in the order the application saw them, and the sum
    of the application's own write counters (the same number, or a write went unlogged)."""

    entries: list[tuple[str, str]]
    counted: int


class SoakTarget(Protocol):
    """A target of the soak: its config, and the application's own view of its passwords."""

    name: str

    def document(self) -> dict[str, Any]: ...

    async def holds(self, account: str, password: str) -> bool:
        """Whether the application takes ``password`` as ``account``'s password now."""
        ...

    async def writes(self) -> WriteLog | None:
        """Every write the application saw; None when it keeps no such history."""
        ...

    def matches(self, password: str, stored: str) -> bool:
        """Whether ``stored`` (one write's hash) was made from ``password``."""
        ...

    async def close(self) -> None: ...


class HtpasswdFile:
    """An htpasswd file of bcrypt hashes; a costlier hash keeps each delivery in flight longer,
    so more kills land on a worker in the middle of one."""

    def __init__(self, name: str, path: Path, *, bcrypt_cost: int) -> None:
        if HTPASSWD is None:
            raise RuntimeError("the soak needs Apache's htpasswd (apt install apache2-utils)")
        self.name, self.path, self.cost = name, path, bcrypt_cost

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "htpasswd",
            "path": str(self.path),
            "bcrypt_cost": self.cost,
        }

    async def holds(self, account: str, password: str) -> bool:
        assert HTPASSWD is not None
        if not self.path.exists():
            return False
        proc = await asyncio.create_subprocess_exec(
            HTPASSWD,
            "-v",
            "-i",
            str(self.path),
            account,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.communicate(password.encode())
        return proc.returncode == 0

    async def writes(self) -> None:
        return None

    def matches(self, password: str, stored: str) -> bool:
        return verify_password("bcrypt", Password(password), "$2b$" + stored.removeprefix("$2y$"))

    async def close(self) -> None:
        """The file stays with the run's other files."""


class PostgresTable:
    """``soak_users`` in its own scratch database (``url``), which the caller creates and drops."""

    def __init__(self, name: str, url: str, *, scheme: HashScheme = SQL_HASH) -> None:
        self.name, self.url, self.scheme = name, url, scheme

    async def create(self, accounts: list[str]) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(_PG_SETUP)
            await conn.execute("INSERT INTO soak_users (login) SELECT unnest($1::text[])", accounts)
        finally:
            await conn.close()

    def document(self) -> dict[str, Any]:
        query = STATEMENT.format(users="soak_users")
        return {
            "name": self.name,
            "type": "sql",
            "dsn": self.url,
            "query": query,
            "hash": self.scheme,
        }

    async def _fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(self.url)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def holds(self, account: str, password: str) -> bool:
        rows = await self._fetch("SELECT pw FROM soak_users WHERE login = $1", account)
        return bool(rows) and rows[0][0] is not None and self.matches(password, rows[0][0])

    async def writes(self) -> WriteLog:
        rows = await self._fetch("SELECT login, pw FROM soak_writes ORDER BY id")
        counted = await self._fetch("SELECT coalesce(sum(writes), 0) FROM soak_users")
        return WriteLog([(r[0], r[1]) for r in rows], int(counted[0][0]))

    def matches(self, password: str, stored: str) -> bool:
        return verify_password(self.scheme, Password(password), stored)

    async def close(self) -> None:
        """The database is dropped with the run's other scratch databases."""


class MariadbTable:
    """``soak_users_<token>`` and ``soak_writes_<token>`` in the database of ``url``
    (``mysql://user[:password]@host:port/db``), dropped by :meth:`close`."""

    def __init__(self, name: str, url: str, *, scheme: HashScheme = SQL_HASH) -> None:
        self.name, self.url, self.scheme = name, url, scheme
        suffix = secrets.token_hex(4)
        self.users, self.log = f"soak_users_{suffix}", f"soak_writes_{suffix}"

    async def _run(self, *statements: tuple[str, Any]) -> list[tuple[Any, ...]]:
        """Run each (statement, args) on one autocommit connection; the last one's rows."""
        import aiomysql  # optional: only a run with --mysql-url needs it

        parts = urlsplit(self.url)
        conn = await aiomysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            db=parts.path.lstrip("/"),
            autocommit=True,
        )
        try:
            rows: list[tuple[Any, ...]] = []
            async with conn.cursor() as cur:
                for sql, args in statements:
                    await cur.execute(sql, args)
                    rows = list(await cur.fetchall())
            return rows
        finally:
            conn.close()

    async def create(self, accounts: list[str]) -> None:
        values = ", ".join(["(%s)"] * len(accounts))
        await self._run(
            (
                f"CREATE TABLE {self.users} (login varchar(64) PRIMARY KEY, pw text,"
                " writes integer NOT NULL DEFAULT 0)",
                None,
            ),
            (
                f"CREATE TABLE {self.log} (id bigint AUTO_INCREMENT PRIMARY KEY,"
                " login varchar(64) NOT NULL, pw text)",
                None,
            ),
            (
                f"CREATE TRIGGER {self.log} AFTER UPDATE ON {self.users} FOR EACH ROW"
                f" INSERT INTO {self.log} (login, pw) VALUES (NEW.login, NEW.pw)",
                None,
            ),
            (f"INSERT INTO {self.users} (login) VALUES {values}", accounts),
        )

    def document(self) -> dict[str, Any]:
        query = STATEMENT.format(users=self.users)
        return {
            "name": self.name,
            "type": "sql",
            "dsn": self.url,
            "query": query,
            "hash": self.scheme,
        }

    async def holds(self, account: str, password: str) -> bool:
        rows = await self._run((f"SELECT pw FROM {self.users} WHERE login = %s", [account]))
        return bool(rows) and rows[0][0] is not None and self.matches(password, rows[0][0])

    async def writes(self) -> WriteLog:
        rows = await self._run((f"SELECT login, pw FROM {self.log} ORDER BY id", None))
        counted = await self._run((f"SELECT coalesce(sum(writes), 0) FROM {self.users}", None))
        return WriteLog([(r[0], r[1]) for r in rows], int(counted[0][0]))

    def matches(self, password: str, stored: str) -> bool:
        return verify_password(self.scheme, Password(password), stored)

    async def close(self) -> None:
        await self._run((f"DROP TABLE IF EXISTS {self.users}, {self.log}", None))


async def held_seq(
    target: SoakTarget, account: str, newest_first: list[tuple[int, str]]
) -> int | None:
    """Which of ``account``'s acknowledged passwords (seq, password), newest first, ``target``
    takes now, asking the application itself; None: none of them."""
    for seq, password in newest_first:
        if await target.holds(account, password):
            return seq
    return None
