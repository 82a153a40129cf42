"""The SQL adapter against a real PostgreSQL database and a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr, ValidationError

from targets.base import Password, PermanentError, TransientError
from targets.hashing import verify_password
from targets.sql import SqlSettings, SqlTarget, compile_query
from tests.support import write_secret

UPDATE = "UPDATE users SET pw_hash = :hash WHERE login = :account"
UNICODE = "Пароль-密码-🔑-ß"


@pytest.fixture
async def users_db(empty_database_url: str) -> str:
    """A PostgreSQL database with a ``users`` table holding alice and bob."""
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "CREATE TABLE users (login text PRIMARY KEY, pw_hash text NOT NULL DEFAULT '');"
            "INSERT INTO users (login) VALUES ('alice'), ('bob');"
        )
    finally:
        await conn.close()
    return empty_database_url


async def stored_hash(url: str, login: str) -> str:
    """The hash PostgreSQL holds for ``login``."""
    conn = await asyncpg.connect(url)
    try:
        value: str = await conn.fetchval("SELECT pw_hash FROM users WHERE login = $1", login)
    finally:
        await conn.close()
    return value


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    """A SQLite file with a ``users`` table holding alice and bob."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE users (login TEXT PRIMARY KEY, pw_hash TEXT NOT NULL DEFAULT '')"
        )
        conn.execute("INSERT INTO users (login) VALUES ('alice'), ('bob')")
    conn.close()
    return path


def sqlite_hash(path: Path, login: str) -> str:
    """The hash the SQLite file holds for ``login``."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT pw_hash FROM users WHERE login = ?", (login,)).fetchone()
    conn.close()
    return str(row[0])


def pg_target(url: str, query: str = UPDATE, **extra: object) -> SqlTarget:
    """A target on ``url`` running ``query``."""
    return SqlTarget("app", SqlSettings.model_validate({"dsn": url, "query": query, **extra}))


async def test_postgresql_stores_a_verifiable_argon2id_hash(users_db: str) -> None:
    """set_password stores an argon2id hash of the new password for that login only."""
    target = pg_target(users_db)
    try:
        await target.check()
        await target.set_password("alice", Password(UNICODE))
    finally:
        await target.close()
    hashed = await stored_hash(users_db, "alice")
    assert hashed.startswith("$argon2id$")
    assert verify_password("argon2id", Password(UNICODE), hashed)
    assert not verify_password("argon2id", Password("Пароль"), hashed)
    assert await stored_hash(users_db, "bob") == ""


async def test_postgresql_query_with_casts_and_literals(users_db: str) -> None:
    """Casts (``::``) and colons inside string literals are not taken for placeholders."""
    query = (
        "UPDATE users SET pw_hash = :hash::text || '' WHERE login = :account::text "
        "AND ':nope' <> 'x'"
    )
    target = pg_target(users_db, query, hash="bcrypt")
    try:
        await target.set_password("bob", Password("bob-pw"))
    finally:
        await target.close()
    assert verify_password("bcrypt", Password("bob-pw"), await stored_hash(users_db, "bob"))


async def test_postgresql_unknown_account_is_permanent(users_db: str) -> None:
    """A statement that changes no row reports the account as not found."""
    target = pg_target(users_db, hash="pbkdf2_sha256")
    try:
        with pytest.raises(PermanentError, match="account not found"):
            await target.set_password("mallory", Password("pw"))
    finally:
        await target.close()


async def test_postgresql_sql_error_is_permanent_and_names_the_class(users_db: str) -> None:
    """A statement on a missing table fails permanently, naming the error, not the values."""
    target = pg_target(users_db, "UPDATE nosuch SET pw = :hash WHERE login = :account")
    try:
        with pytest.raises(PermanentError, match="UndefinedTableError") as caught:
            await target.set_password("alice", Password("s3cret-value"))
    finally:
        await target.close()
    assert "s3cret-value" not in str(caught.value)
    assert "alice" not in str(caught.value)


async def test_unreachable_postgresql_is_transient() -> None:
    """A server that refuses connections makes both set_password and check transient."""
    target = pg_target("postgresql://postgres@127.0.0.1:1/x", timeout=5)
    try:
        with pytest.raises(TransientError):
            await target.set_password("alice", Password("pw"))
        with pytest.raises(TransientError):
            await target.check()
    finally:
        await target.close()


async def test_dsn_file_is_read(users_db: str, tmp_path: Path) -> None:
    """A DSN kept in a file works like an inline one."""
    dsn_file = tmp_path / "dsn"
    write_secret(dsn_file, users_db + "\n")
    settings = SqlSettings(dsn_file=dsn_file, query=UPDATE, hash="ssha512")
    target = SqlTarget("app", settings)
    try:
        await target.set_password("alice", Password("pw"))
    finally:
        await target.close()
    assert verify_password("ssha512", Password("pw"), await stored_hash(users_db, "alice"))


async def test_sqlite_stores_a_verifiable_hash(sqlite_db: Path) -> None:
    """Against a SQLite file, set_password stores a hash of the new password for that login."""
    target = pg_target(f"sqlite:///{sqlite_db}", hash="bcrypt")
    try:
        await target.check()
        await target.set_password("bob", Password(UNICODE))
        with pytest.raises(PermanentError, match="account not found"):
            await target.set_password("mallory", Password("pw"))
    finally:
        await target.close()
    assert verify_password("bcrypt", Password(UNICODE), sqlite_hash(sqlite_db, "bob"))
    assert sqlite_hash(sqlite_db, "alice") == ""


async def test_sqlite_placeholder_order_follows_the_query(sqlite_db: Path) -> None:
    """With :account before :hash in the text, SQLite still binds each value to its name."""
    query = "UPDATE users SET pw_hash = :hash WHERE login = :account AND :account <> :hash"
    target = pg_target(f"sqlite:///{sqlite_db}", query, hash="sha512_crypt")
    try:
        await target.set_password("alice", Password("pw"))
    finally:
        await target.close()
    assert verify_password("sha512_crypt", Password("pw"), sqlite_hash(sqlite_db, "alice"))


async def test_sqlite_missing_file_is_permanent_and_not_created(tmp_path: Path) -> None:
    """A DSN naming a file that does not exist fails permanently instead of creating a database."""
    path = tmp_path / "absent.db"
    target = pg_target(f"sqlite:///{path}")
    try:
        with pytest.raises(PermanentError, match="CANTOPEN"):
            await target.check()
    finally:
        await target.close()
    assert not path.exists()


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("UPDATE users SET pw_hash = :hash", ":account"),
        ("UPDATE users SET pw = 'x' WHERE login = :account", ":hash"),
        ("UPDATE users SET pw_hash = :hash WHERE login = :account AND realm = :realm", ":realm"),
        ("UPDATE users SET pw_hash = $2 WHERE login = :account AND :hash = :hash", "positional"),
    ],
)
def test_bad_placeholders_are_a_query_error(query: str, complaint: str) -> None:
    """A query without both placeholders, or with others, is refused naming the query field."""
    with pytest.raises(ValidationError, match=complaint) as caught:
        SqlSettings(dsn=SecretStr("postgresql://h/db"), query=query)
    assert [error["loc"] for error in caught.value.errors()] == [("query",)]


def test_placeholders_translate_per_dialect() -> None:
    """Named placeholders become $1/$2 for PostgreSQL and ordered ? for SQLite."""
    query = "UPDATE u SET h = :hash WHERE l = :account"
    assert compile_query(query, "postgresql") == (
        "UPDATE u SET h = $2 WHERE l = $1",
        ("account", "hash"),
    )
    assert compile_query(query, "sqlite") == ("UPDATE u SET h = ? WHERE l = ?", ("hash", "account"))


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"dsn": "mssql://root:hunter2@db/app"}, "dsn"),
        ({"dsn": "sqlite:///relative.db"}, "dsn"),
        ({}, "dsn_file"),
        ({"dsn": "postgresql://h/db", "dsn_file": "/etc/hostname"}, "dsn_file"),
        ({"dsn": "postgresql://h/db", "pool_size": 0}, "pool_size"),
    ],
)
def test_bad_settings_name_the_field_and_hide_secrets(
    values: dict[str, object], field: str
) -> None:
    """Invalid settings name the offending field and never echo the DSN's password."""
    with pytest.raises(ValidationError, match=field) as caught:
        SqlSettings.model_validate({"query": UPDATE, **values})
    assert "hunter2" not in str(caught.value)


def test_settings_repr_hides_the_dsn() -> None:
    """The settings' repr does not show the DSN, which may contain a password."""
    settings = SqlSettings(dsn=SecretStr("postgresql://u:hunter2@h/db"), query=UPDATE)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(SqlTarget("app", settings))
