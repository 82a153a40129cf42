"""The PostgreSQL the service runs on: an external server, or an embedded one under ``data_dir``.

Both paths end in the same asyncpg pool, held by a :class:`Database`; the embedded server
(``pgserver``) listens on a unix socket only, is stopped when the last process using it exits,
and is recovered at the next start after a crash. This module
and ``pcns.queue`` are the only ones that import asyncpg: driver errors are translated here,
once, into :class:`pcns.errors.DatabaseUnavailable` and :class:`pcns.errors.QueueRefused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
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
    # The driver's own "cannot do it now": TargetServerAttributeNotMatched (every host answered,
    # none as database.url's target_session_attrs asks: all standbys or read-only, as in a
    # failover), and a pooled connection that the server ended while it sat idle ("cannot
    # switch to state 12; another operation (2) is in progress", after a restart).
    asyncpg.exceptions.InternalClientError,
)


class _OneLineDriverWarnings(logging.Filter):
    """asyncpg logs each failed refill of a pool's minimum size with the whole traceback: while
    the database is away, dozens of lines for what pcns' own events already say. The line is
    kept, with the error's class name (as pcns logs a driver error) instead of the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__})"
            record.args = None
            record.exc_info = None
        return True


_ONE_LINE_DRIVER_WARNINGS = _OneLineDriverWarnings()


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
    """Start a private PostgreSQL under ``data_dir/postgres`` (initdb on first use), or join the
    one another pcns process on the same ``data_dir`` runs; the last holder to exit stops it.

    What a process killed while holding the server left behind is cleared first
    (:func:`_reclaim`), and dead holders again at exit, so that a crash never keeps the server
    running after the last live holder is gone.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # pgserver's inter-process lock (a file under the user's runtime dir) guards its holder list
    # and every start and stop; _instances holds this process's own handles.
    server_class: Any = pgserver.PostgresServer  # type: ignore[attr-defined]
    get_server: Any = pgserver.get_server  # type: ignore[attr-defined]

    def start() -> Any:
        if pgdata not in server_class._instances:  # else this process holds it already
            with server_class._lock:
                _reclaim(pgdata)
        return get_server(pgdata, cleanup_mode="stop")

    def stop() -> None:
        # pgserver stops the server only when its list holds this pid alone; another holder's
        # SIGKILL would otherwise leave it running for good.
        with server_class._lock:
            _prune_holders(pgdata, ours=True)
        server.cleanup()

    server: Any = await asyncio.to_thread(start)
    url: str = server.get_uri()
    log.info("embedded_postgres_started", data_dir=str(pgdata))
    try:
        yield url
    finally:
        await asyncio.to_thread(stop)
        log.info("embedded_postgres_stopped")


# pgserver's record of the processes holding a server (``DiskList``, a JSON list of pids): each
# adds its pid on start and removes it on exit, and the one that removes the last pid stops it.
_HOLDERS_FILE = ".handle_pids.json"


def _reclaim(pgdata: Path) -> None:
    """Clear what dead holders of ``pgdata`` left; called under pgserver's lock, before joining.

    - Pids of processes that are gone leave pgserver's holder list.
    - A postmaster that no live process holds (its pcns was SIGKILLed) gets a fast shutdown:
      this start then begins from a stopped server like any other, not from the state and start
      options a dead process left (pgserver would adopt only a server that reports ``ready``).
    - A ``postmaster.pid`` that names no running PostgreSQL (power loss; a container restart
      that gave its pid to another process) is deleted: pgserver would take that process for
      the server, hand out a dead socket and, at exit, kill the process.
    """
    holders, dead = _prune_holders(pgdata, ours=False)
    running = _postmasters(pgdata)
    stopped: list[int] = []
    if running and not holders:
        for proc in running:
            _fast_shutdown(proc)
            stopped.append(proc.pid)
    stale = not running and _clear_stale_lock_files(pgdata)
    if dead or stopped or stale:
        log.warning(
            "embedded_postgres_recovered",
            data_dir=str(pgdata),
            dead_holders=dead,
            stopped_postmaster=stopped,
            stale_lock_file=stale,
        )


def _prune_holders(pgdata: Path, *, ours: bool) -> tuple[list[int], list[int]]:
    """Rewrite pgserver's holder list with only live pids; return (live, dropped).

    This process's own pid stays only when ``ours``: at start it holds nothing yet, so an entry
    with its pid was left by a dead process that had the same one (pid 1 in a new container).
    """
    path = pgdata / _HOLDERS_FILE
    try:
        recorded: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return [], []
    except ValueError:  # torn: a holder was killed while pgserver rewrote it in place
        recorded = None
    pids = [p for p in recorded if isinstance(p, int)] if isinstance(recorded, list) else []
    me = os.getpid()
    live = [pid for pid in pids if (ours if pid == me else _alive(pid))]
    if live != recorded:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(live))
        os.replace(tmp, path)  # whole or not at all, unlike pgserver's own rewrite
    return live, [pid for pid in pids if pid not in live]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie has exited and only waits for its parent to reap it."""
    if pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


def _postmasters(pgdata: Path) -> list[Any]:
    """Running postmasters of ``pgdata``: ``postgres`` processes whose command line holds the
    path, as ``pg_ctl -D`` starts them (pgserver's own test for a server left on a data dir;
    backends rename their command line, so only the postmaster matches)."""
    return [
        proc
        for proc in psutil.process_iter(["name", "cmdline", "status"])
        if proc.info["name"] == "postgres"
        and str(pgdata) in (proc.info["cmdline"] or ())
        and proc.info["status"] != psutil.STATUS_ZOMBIE
    ]


def _fast_shutdown(postmaster: Any) -> None:
    """Stop ``postmaster`` with SIGINT, the fast shutdown ``pg_ctl stop -m fast`` asks for; then
    SIGQUIT, immediate shutdown, if that does not end it. Signalled directly: pg_ctl refuses to
    run as root, and under root pgserver runs the server as its own ``pgserver`` user."""
    for sig, timeout in ((signal.SIGINT, 60.0), (signal.SIGQUIT, 10.0)):
        try:
            postmaster.send_signal(sig)
            postmaster.wait(timeout)
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            continue
        return
    raise DatabaseUnavailable(
        f"the embedded PostgreSQL a crashed process left (pid {postmaster.pid}) does not stop",
        cause="postmaster_left_running",
    )


def _clear_stale_lock_files(pgdata: Path) -> bool:
    """Delete ``postmaster.pid`` and the socket lock files of ``pgdata`` unless the pid the file
    names is a PostgreSQL process; called only when no postmaster of ``pgdata`` runs."""
    pid_file = pgdata / "postmaster.pid"
    try:
        first_line = pid_file.read_text().partition("\n")[0].strip()
    except FileNotFoundError:
        return False
    if first_line.isdigit() and _is_postgres(int(first_line)):
        return False  # some PostgreSQL has that pid: not ours to judge
    for lock_file in [*pgdata.glob(".s.PGSQL.*.lock"), pid_file]:
        lock_file.unlink(missing_ok=True)
    return True


def _is_postgres(pid: int) -> bool:
    """Whether ``pid`` is some running PostgreSQL process (when unsure: yes, hands off)."""
    try:
        return bool(_alive(pid) and psutil.Process(pid).name() == "postgres")
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


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
    logging.getLogger("asyncpg.pool").addFilter(_ONE_LINE_DRIVER_WARNINGS)  # once: same filter
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
