"""The SQL adapter against a real MySQL/MariaDB server (``PCNS_TEST_MYSQL_URL``).

Unset, the server tests skip; with ``PCNS_REQUIRE_MYSQL=1`` (CI) a missing URL, an unreachable
server or a missing aiomysql fails them instead. Each test gets its own uniquely named table.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest
from pydantic import SecretStr, ValidationError

from targets.base import Password, PermanentError, TransientError
from targets.hashing import verify_password
from targets.sql import SqlSettings, SqlTarget, compile_query

UNICODE = "Пароль-密码-🔑-ß"
LONG = ("Long-pässword-" * 10)[:128]
UNICODE_LOGIN = "jürgen-🔑"  # four-byte UTF-8: survives only with utf8mb4 on the wire


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("PCNS_REQUIRE_MYSQL") == "1":
        pytest.fail(f"PCNS_REQUIRE_MYSQL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mysql_driver() -> None:
    """aiomysql is installed (the adapter imports it only for mysql:// DSNs)."""
    if importlib.util.find_spec("aiomysql") is None:
        _unavailable("aiomysql is not installed")


async def admin_connection(url: str) -> Any:
    """A plain aiomysql connection to ``url`` for setting up and inspecting tables."""
    import aiomysql

    parts = urlsplit(url)
    return await aiomysql.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        db=unquote(parts.path.removeprefix("/")) or None,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=5,
    )


async def run_sql(url: str, statement: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on its own connection; the rows it returned."""
    conn = await admin_connection(url)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement, args or None)
            return list(await cursor.fetchall())
    finally:
        await conn.ensure_closed()


@pytest.fixture(scope="session")
async def mysql_url(mysql_driver: None) -> str:
    """URL of the MySQL/MariaDB server under test, checked to answer."""
    url = os.environ.get("PCNS_TEST_MYSQL_URL")
    if not url:
        _unavailable("PCNS_TEST_MYSQL_URL is not set")
    try:
        await run_sql(url, "SELECT 1")
    except Exception as exc:  # any failure to connect means the suite cannot run
        _unavailable(f"PCNS_TEST_MYSQL_URL does not answer: {type(exc).__name__} {exc}")
    return url


@pytest.fixture
async def users_table(mysql_url: str) -> AsyncIterator[str]:
    """A fresh utf8mb4 ``login``/``pw_hash`` table holding alice, bob and a four-byte login."""
    table = "pcns_t_" + uuid.uuid4().hex[:16]
    await run_sql(
        mysql_url,
        f"CREATE TABLE {table} (login VARCHAR(191) PRIMARY KEY, "
        "pw_hash VARCHAR(255) NOT NULL DEFAULT '') "
        "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    )
    try:
        await run_sql(
            mysql_url,
            f"INSERT INTO {table} (login) VALUES ('alice'), ('bob'), (%s)",
            (UNICODE_LOGIN,),
        )
        yield table
    finally:
        await run_sql(mysql_url, f"DROP TABLE IF EXISTS {table}")


def update(table: str) -> str:
    return f"UPDATE {table} SET pw_hash = :hash WHERE login = :account"


async def stored_hash(url: str, table: str, login: str) -> str:
    """The hash the server holds for ``login``."""
    rows = await run_sql(url, f"SELECT pw_hash FROM {table} WHERE login = %s", (login,))
    return str(rows[0][0])


@contextlib.asynccontextmanager
async def sql_target(dsn: str, query: str, **extra: object) -> AsyncIterator[SqlTarget]:
    """A target on ``dsn`` running ``query``, closed afterwards."""
    settings = SqlSettings.model_validate({"dsn": dsn, "query": query, **extra})
    target = SqlTarget("app", settings)
    try:
        yield target
    finally:
        await target.close()


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` with ``password`` instead."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{parts.port or 3306}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("scheme", ["argon2id", "bcrypt", "pbkdf2_sha256", "sha512_crypt"])
async def test_mysql_stores_a_verifiable_hash(
    mysql_url: str, users_table: str, scheme: str
) -> None:
    """set_password stores a hash of a Unicode password that verifies, for that login only."""
    async with sql_target(mysql_url, update(users_table), hash=scheme) as target:
        await target.check()
        await target.set_password("alice", Password(UNICODE))
    hashed = await stored_hash(mysql_url, users_table, "alice")
    assert verify_password(scheme, Password(UNICODE), hashed)
    assert not verify_password(scheme, Password("Пароль"), hashed)
    assert await stored_hash(mysql_url, users_table, "bob") == ""


@pytest.mark.parametrize("scheme", ["argon2id", "pbkdf2_sha256", "sha512_crypt"])
async def test_mysql_stores_a_128_character_password(
    mysql_url: str, users_table: str, scheme: str
) -> None:
    """A 128-character password is hashed whole and verifies."""
    async with sql_target(mysql_url, update(users_table), hash=scheme) as target:
        await target.set_password("alice", Password(LONG))
    hashed = await stored_hash(mysql_url, users_table, "alice")
    assert verify_password(scheme, Password(LONG), hashed)
    assert not verify_password(scheme, Password(LONG[:72]), hashed)


async def test_mysql_bcrypt_refuses_a_128_character_password(
    mysql_url: str, users_table: str
) -> None:
    """bcrypt reports a password over 72 bytes as permanent and stores nothing truncated."""
    async with sql_target(mysql_url, update(users_table), hash="bcrypt") as target:
        with pytest.raises(PermanentError, match="72 bytes") as caught:
            await target.set_password("alice", Password(LONG))
    assert LONG not in str(caught.value)
    assert await stored_hash(mysql_url, users_table, "alice") == ""


async def test_mariadb_scheme_and_four_byte_login(mysql_url: str, users_table: str) -> None:
    """A mariadb:// DSN works, and a login with a four-byte character is matched (utf8mb4)."""
    dsn = "mariadb://" + mysql_url.partition("://")[2]
    async with sql_target(dsn, update(users_table), hash="pbkdf2_sha256") as target:
        await target.set_password(UNICODE_LOGIN, Password(UNICODE))
    hashed = await stored_hash(mysql_url, users_table, UNICODE_LOGIN)
    assert verify_password("pbkdf2_sha256", Password(UNICODE), hashed)
    assert await stored_hash(mysql_url, users_table, "alice") == ""


async def test_mysql_unknown_account_is_permanent(mysql_url: str, users_table: str) -> None:
    """A statement that matches no row reports the account as not found."""
    async with sql_target(mysql_url, update(users_table), hash="pbkdf2_sha256") as target:
        with pytest.raises(PermanentError, match="account not found"):
            await target.set_password("mallory", Password("pw"))


async def test_mysql_unchanged_row_still_counts_as_found(mysql_url: str, users_table: str) -> None:
    """A statement that matches the row but leaves it as it was is not 'account not found'."""
    # Sets pw_hash to '' which alice already has: MySQL calls that 0 rows affected by default.
    query = f"UPDATE {users_table} SET pw_hash = LEFT(:hash, 0) WHERE login = :account"
    conn = await admin_connection(mysql_url)
    try:
        async with conn.cursor() as cursor:
            plain_count = await cursor.execute(
                f"UPDATE {users_table} SET pw_hash = '' WHERE login = 'alice'"
            )
    finally:
        await conn.ensure_closed()
    assert plain_count == 0  # the case FOUND_ROWS exists for
    async with sql_target(mysql_url, query, hash="pbkdf2_sha256") as target:
        await target.set_password("alice", Password("pw"))
        await target.set_password("alice", Password("pw"))
    assert await stored_hash(mysql_url, users_table, "alice") == ""


async def test_mysql_literals_comments_and_percent_signs(mysql_url: str, users_table: str) -> None:
    """MySQL's escapes, # comments and % signs in the statement are not taken for placeholders."""
    query = (
        f"UPDATE {users_table} SET pw_hash = :hash "
        "WHERE login = :account AND login LIKE '%' AND 'it\\'s :nope' <> ''  # end :comment"
    )
    async with sql_target(mysql_url, query, hash="sha512_crypt") as target:
        await target.set_password("bob", Password(UNICODE))
    hashed = await stored_hash(mysql_url, users_table, "bob")
    assert verify_password("sha512_crypt", Password(UNICODE), hashed)


async def test_mysql_non_ascii_database_password(mysql_url: str, users_table: str) -> None:
    """A database user with a non-ASCII password (percent-encoded in the DSN) can log in."""
    user = "pcns_" + uuid.uuid4().hex[:10]
    password = "Pässwörd-密码-🔑"
    rows = await run_sql(mysql_url, "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', -1), DATABASE()")
    host, database = rows[0]
    await run_sql(mysql_url, "CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
    try:
        await run_sql(
            mysql_url, f"GRANT SELECT, UPDATE ON `{database}`.{users_table} TO %s@%s", (user, host)
        )
        dsn = with_credentials(mysql_url, user, password)
        async with sql_target(dsn, update(users_table), hash="pbkdf2_sha256") as target:
            await target.set_password("alice", Password("pw"))
    finally:
        await run_sql(mysql_url, "DROP USER %s@%s", (user, host))
    assert verify_password(
        "pbkdf2_sha256", Password("pw"), await stored_hash(mysql_url, users_table, "alice")
    )


async def test_unreachable_mysql_is_transient(mysql_driver: None) -> None:
    """A server that refuses connections makes both set_password and check transient."""
    async with sql_target(
        "mysql://root@127.0.0.1:1/test", "UPDATE u SET h = :hash WHERE l = :account", timeout=5
    ) as target:
        with pytest.raises(TransientError, match="cannot reach database"):
            await target.set_password("alice", Password("pw"))
        with pytest.raises(TransientError, match="cannot reach database"):
            await target.check()


async def test_mysql_wrong_password_is_transient_naming_credentials(
    mysql_url: str, users_table: str
) -> None:
    """A refused login is transient (an operator can fix it) and says to check the credentials."""
    user = unquote(urlsplit(mysql_url).username or "root")
    dsn = with_credentials(mysql_url, user, "not-the-password-Xq7")
    async with sql_target(dsn, update(users_table), hash="pbkdf2_sha256") as target:
        with pytest.raises(TransientError, match="credentials") as caught:
            await target.set_password("alice", Password("s3cret-value"))
        with pytest.raises(TransientError, match="1045"):
            await target.check()
    assert "not-the-password-Xq7" not in str(caught.value)
    assert "s3cret-value" not in str(caught.value)
    assert await stored_hash(mysql_url, users_table, "alice") == ""


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("UPDATE pcns_nosuch_table SET pw = :hash WHERE login = :account", "1146"),
        ("UPDATE {table} SET nosuch = :hash WHERE login = :account", "1054"),
        ("UPDATE {table} SET pw_hash = :hash WHERE login = :account ORDER", "1064"),
    ],
)
async def test_mysql_bad_statement_is_permanent_without_values(
    mysql_url: str, users_table: str, query: str, complaint: str
) -> None:
    """A missing table or column or a syntax error is permanent, naming the error, not values."""
    async with sql_target(mysql_url, query.format(table=users_table), hash="ssha512") as target:
        with pytest.raises(PermanentError, match=complaint) as caught:
            await target.set_password("alice", Password("s3cret-value"))
    reason = str(caught.value)
    assert reason.startswith("database refused the statement: ")
    assert "s3cret-value" not in reason
    assert "alice" not in reason
    assert "{SSHA512}" not in reason


async def test_mysql_tls_request_is_never_ignored(mysql_url: str, users_table: str) -> None:
    """With ?ssl=true and no verified TLS to be had, nothing is sent in clear: transient error."""
    dsn = mysql_url + ("&" if "?" in mysql_url else "?") + "ssl=true"
    async with sql_target(dsn, update(users_table), hash="pbkdf2_sha256") as target:
        with pytest.raises(TransientError, match="TLS"):
            await target.set_password("alice", Password("pw"))
    assert await stored_hash(mysql_url, users_table, "alice") == ""


async def test_mysql_statement_timeout_is_transient_and_the_pool_recovers(
    mysql_url: str, users_table: str
) -> None:
    """A statement stuck behind a row lock times out as transient; the next one succeeds."""
    holder = await admin_connection(mysql_url)
    try:
        await holder.begin()
        async with holder.cursor() as cursor:
            await cursor.execute(f"SELECT * FROM {users_table} WHERE login = 'alice' FOR UPDATE")
        async with sql_target(
            mysql_url, update(users_table), hash="pbkdf2_sha256", timeout=1, pool_size=1
        ) as target:
            with pytest.raises(TransientError, match="in time"):
                await target.set_password("alice", Password("pw"))
            await holder.rollback()
            await target.set_password("alice", Password("pw"))
            await target.set_password("bob", Password("pw"))
    finally:
        await holder.ensure_closed()
    for login in ("alice", "bob"):
        hashed = await stored_hash(mysql_url, users_table, login)
        assert verify_password("pbkdf2_sha256", Password("pw"), hashed)


def test_placeholders_translate_to_pyformat_for_mysql() -> None:
    """For MySQL, placeholders become %s in text order and literal % signs are doubled."""
    query = "UPDATE u SET h = :hash WHERE l = :account AND n LIKE 'a%' # 50% :x"
    assert compile_query(query, "mysql") == (
        "UPDATE u SET h = %s WHERE l = %s AND n LIKE 'a%%' # 50%% :x",
        ("hash", "account"),
    )


@pytest.mark.parametrize(
    ("dsn", "complaint"),
    [
        ("mysql://root:hunter2@db/app?sslmode=require", "sslmode"),
        ("mysql://root:hunter2@db/app?ssl=maybe", "ssl must be true or false"),
        ("mysql://root:hunter2@db/app?ssl_ca=/nonexistent/ca.pem", "ssl_ca"),
        ("mysql://root:hunter2@db/app?ssl=true&ssl=false", "twice"),
        ("mysql://:hunter2@db/app", "needs a user"),
        ("mysql://root:hunter2@db:99999/app", "port"),
    ],
)
def test_bad_mysql_dsn_names_the_problem_and_hides_the_password(dsn: str, complaint: str) -> None:
    """A malformed mysql DSN or an unknown option (maybe a TLS request) is refused at load."""
    with pytest.raises(ValidationError, match=complaint) as caught:
        SqlSettings(dsn=SecretStr(dsn), query="UPDATE u SET h = :hash WHERE l = :account")
    assert "hunter2" not in str(caught.value)
    assert [error["loc"] for error in caught.value.errors()] == [("dsn",)]


def test_mysql_query_positional_placeholder_is_refused(mysql_driver: None) -> None:
    """A %s written into a MySQL statement is refused like any positional placeholder."""
    with pytest.raises(ValidationError, match="positional %s") as caught:
        SqlSettings(
            dsn=SecretStr("mysql://u@db/app"),
            query="UPDATE u SET h = :hash WHERE l = :account AND x = %s",
        )
    assert [error["loc"] for error in caught.value.errors()] == [("query",)]


def test_mysql_tls_options_are_accepted(mysql_driver: None, tmp_path: Path) -> None:
    """ssl=true and an ssl_ca file are valid DSN options."""
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder\n")
    for dsn in ("mysql://u:p@db/app?ssl=true", f"mariadb://u:p@db:3307/app?ssl_ca={ca}"):
        SqlSettings(dsn=SecretStr(dsn), query="UPDATE u SET h = :hash WHERE l = :account")


def test_postgresql_query_is_read_with_postgresql_rules() -> None:
    """PostgreSQL's # operators are not MySQL comments for a postgresql DSN."""
    query = "UPDATE u SET h = :hash, d = d #- '{x}' WHERE l = :account"
    SqlSettings(dsn=SecretStr("postgresql://h/db"), query=query)
    with pytest.raises(ValueError, match=":account"):
        compile_query(query, "mysql")
