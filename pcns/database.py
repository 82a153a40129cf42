"""The PostgreSQL the service runs on: an external server, or an embedded one under ``data_dir``.

Both paths end in the same asyncpg pool, held by a :class:`Database`; the embedded server
(``pgserver``) listens on a unix socket only and is stopped when the service exits. This module
and ``pcns.queue`` are the only ones that import asyncpg: driver errors are translated here,
once, into :class:`pcns.errors.DatabaseUnavailable` and :class:`pcns.errors.QueueRefused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from pcns.config import DatabaseSettings
from pcns.errors import DatabaseUnavailable, QueueRefused

log = structlog.get_logger(__name__)

# What "the database is unreachable right now" looks like from asyncpg; a PostgresError is a
# refusal; anything else is a bug.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
)


@contextmanager
def translated() -> Iterator[None]:
    """Run database calls, raising only :class:`DatabaseUnavailable` or :class:`QueueRefused`.

    ``from None``: the driver's text (a failing row's detail quotes the row) stays out of every
    message and traceback; its class name and SQLSTATE are kept.
    """
    try:
        yield
    except _UNAVAILABLE_ERRORS as exc:
        name = type(exc).__name__
        raise DatabaseUnavailable(f"PostgreSQL is unreachable ({name})", cause=name) from None
    except asyncpg.PostgresError as exc:
        name, code = type(exc).__name__, exc.sqlstate
        raise QueueRefused(
            f"PostgreSQL refused the statement ({name}, SQLSTATE {code})", cause=name, sqlstate=code
        ) from None


@dataclass(frozen=True)
class Database:
    """The pool and the URL it was made from (LISTEN needs its own connection)."""

    url: str
    pool: asyncpg.Pool = field(repr=False)

    async def listen(
        self,
        channel: str,
        on_notify: Callable[[], None],
        stop: asyncio.Event,
        *,
        retry_every: float = 5.0,
    ) -> None:
        """LISTEN on ``channel`` until ``stop``, reconnecting whenever the connection is lost.

        Every notification calls ``on_notify``, and so does each (re)connection: whatever was
        announced while it was down is then picked up by the caller's own read.
        """
        while not stop.is_set():
            try:
                conn = await connect(self.url, wait=retry_every)
            except DatabaseUnavailable:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=retry_every)
                continue
            lost = asyncio.Event()
            try:
                await conn.add_listener(channel, lambda *_: on_notify())
                conn.add_termination_listener(_setter(lost))
                on_notify()
                waiters = [asyncio.create_task(e.wait()) for e in (stop, lost)]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
            except _UNAVAILABLE_ERRORS:
                pass
            finally:
                with contextlib.suppress(*_UNAVAILABLE_ERRORS):
                    await asyncio.wait_for(conn.close(), timeout=5)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start a private PostgreSQL under ``data_dir/postgres`` (initdb on first use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    get_server: Any = pgserver.get_server  # type: ignore[attr-defined]
    server: Any = await asyncio.to_thread(get_server, pgdata, cleanup_mode="stop")
    url: str = server.get_uri()
    log.info("embedded_postgres_started", data_dir=str(pgdata))
    try:
        yield url
    finally:
        await asyncio.to_thread(server.cleanup)
        log.info("embedded_postgres_stopped")


@asynccontextmanager
async def database_url(settings: DatabaseSettings) -> AsyncIterator[str]:
    """The configured URL, or an embedded server's when ``url`` is empty."""
    url = settings.url.get_secret_value()
    if url:
        yield url
        return
    async with embedded_postgres(settings.data_dir) as embedded:
        yield embedded


async def connect(url: str, *, wait: float = 30.0) -> asyncpg.Connection:
    """One connection, retried with backoff while the server is starting or briefly away."""
    with translated():
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_UNAVAILABLE_ERRORS),
            wait=wait_random_exponential(multiplier=0.2, max=3.0),
            stop=stop_after_delay(wait),
            reraise=True,
        ):
            with attempt:
                conn: asyncpg.Connection = await asyncpg.connect(url, timeout=10)
                return conn
    raise AssertionError("unreachable: reraise=True above")  # pragma: no cover


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset round trip.

    The default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: one more round trip per claim, outcome and group commit. pcns leaves no
    session state on a pooled connection (advisory locks are transaction-scoped, no cursor
    outlives its transaction, LISTEN runs on dedicated connections, nothing is SET for the
    session), and asyncpg still rolls back an open transaction before this is called.
    """


@asynccontextmanager
async def create_pool(url: str, *, size: int, wait: float = 30.0) -> AsyncIterator[Database]:
    """A pool whose first connection is retried while the server is starting."""
    conn = await connect(url, wait=wait)
    await conn.close()
    with translated():
        pool = await asyncpg.create_pool(
            url,
            min_size=min(2, size),
            max_size=size,
            command_timeout=30,
            timeout=10,
            max_inactive_connection_lifetime=300,
            reset=_keep_session,
        )
    try:
        yield Database(url, pool)
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except _UNAVAILABLE_ERRORS:
            pool.terminate()
