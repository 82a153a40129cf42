"""A private PostgreSQL cluster for tests and benchmarks that take the database away: a
primary that can be stopped (``pg_ctl stop -m immediate`` is a crash, ``-m fast`` a clean
shutdown) and started again on the same data directory, and streaming standbys made with
``pg_basebackup`` that can be made synchronous and promoted.

Each server listens on a free TCP port of 127.0.0.1 only (no unix socket), with trust
authentication and ``fsync = on``. initdb and postgres refuse to run as root: under root
every tool runs as the ``postgres`` OS user (or pgserver's ``pgserver`` user), which owns the
cluster's temporary directory. The calls block: from async code run them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pgserver

from bench.harness.service import free_port

# pgserver's PostgreSQL (the embedded server the rest of the suite uses) first, then Debian's.
_CANDIDATE_BIN_DIRS = [
    Path(pgserver.__file__).parent / "pginstall" / "bin",
    *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True),
]
_TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres", "psql")


def find_bin_dir() -> Path | None:
    """A directory holding PostgreSQL's server tools (``PCNS_PG_BIN`` first), or None."""
    override = os.environ.get("PCNS_PG_BIN")
    for candidate in [Path(override)] if override else _CANDIDATE_BIN_DIRS:
        if all((candidate / tool).is_file() for tool in _TOOLS):
            return candidate
    return None


def server_user() -> str | None:
    """The OS user the servers run as: None (ourselves) unless we are root; under root the
    ``postgres`` user, or else pgserver's ``pgserver`` user, created as pgserver does."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        from pgserver.utils import ensure_user_exists

        ensure_user_exists("pgserver")  # useradd, as pgserver itself does under root
        return "pgserver"
    return "postgres"


def missing_requirement() -> str | None:
    """Why no private cluster can run here, or None when it can."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) are not installed"
    return None


@dataclass
class PgNode:
    """One PostgreSQL server: a data directory and a port on 127.0.0.1."""

    bin_dir: Path
    data_dir: Path
    port: int
    user: str | None  # the OS user it runs as, None for ourselves

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def run(self, tool: str, *args: str, timeout: float = 60) -> str:
        """Run one of the server's tools as the server's user; its stdout. Output goes to
        files, not pipes: pg_ctl's postmaster would inherit a pipe and keep it open."""
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(
                [str(self.bin_dir / tool), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
                timeout=timeout,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
                cwd=self.data_dir.parent,
            )
            out.seek(0)
            output = out.read()
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {done.returncode}:\n{output}")
        return output

    def configure(self, **settings: str | int) -> None:
        """Append ``name = value`` lines to postgresql.conf (the last one of a name wins)."""
        lines = [f"{name} = '{value}'" for name, value in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start on the existing data directory (after a crash: with crash recovery)."""
        self.run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m immediate`` (a crash: no checkpoint, recovery at the next start),
        ``fast`` (clean: sessions are ended, then a checkpoint)."""
        self.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        return pid_file.exists()

    def promote(self) -> None:
        """A standby becomes a primary (``pg_ctl promote``, waits until it takes writes)."""
        self.run("pg_ctl", "promote", "-D", str(self.data_dir), "-w")

    def sql(self, query: str) -> str:
        """One query through psql; its unaligned, tuples-only output."""
        args = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        return self.run("psql", *args, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query).strip()


class PgCluster:
    """A primary (initdb'd and started by ``__enter__``) and the standbys made from it, in a
    temporary directory removed by ``__exit__`` after every server is stopped."""

    def __init__(self, bin_dir: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.user = user
        self.root = Path(tempfile.mkdtemp(prefix="pcns-pgcluster-"))
        if user is not None:
            shutil.chown(self.root, user, user)
        self.primary = self._node("primary")
        self.standbys: list[PgNode] = []

    def _node(self, name: str) -> PgNode:
        return PgNode(self.bin_dir, self.root / name, free_port(), self.user)

    def __enter__(self) -> PgCluster:
        p = self.primary
        p.run("initdb", "-D", str(p.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        p.configure(
            listen_addresses="127.0.0.1",
            port=p.port,
            unix_socket_directories="",
            fsync="on",
            synchronous_commit="on",
            wal_level="replica",
            max_wal_senders=5,
            wal_keep_size="256MB",
        )
        p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for node in [*self.standbys, self.primary]:
            # A node a test stopped is skipped; one that fails to stop is no reason to keep
            # the others (or the directory).
            if node.running():
                with contextlib.suppress(RuntimeError):
                    node.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def add_standby(self, name: str = "standby1") -> PgNode:
        """A streaming standby of the primary named ``name`` (its ``application_name``), made
        with ``pg_basebackup`` and started. Asynchronous until :meth:`make_synchronous`."""
        s = self._node(name)
        p = self.primary
        s.run(
            "pg_basebackup",
            *("-D", str(s.data_dir), "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres"),
            *("-X", "stream", "-c", "fast"),
        )
        s.configure(
            port=s.port,
            hot_standby="on",
            primary_conninfo=(
                f"host=127.0.0.1 port={p.port} user=postgres application_name={name}"
            ),
        )
        (s.data_dir / "standby.signal").touch()
        if self.user is not None:
            shutil.chown(s.data_dir / "standby.signal", self.user, self.user)
        s.start()
        self.standbys.append(s)
        return s

    def make_synchronous(self, standby: PgNode, timeout: float = 30) -> None:
        """Every commit on the primary waits until ``standby`` has flushed it
        (``synchronous_standby_names``); returns once the standby reports ``sync``.

        Set on the primary only, after the base backup, so the standby, once promoted, does
        not wait for a standby of its own that does not exist.
        """
        name = standby.data_dir.name
        self.primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
        self.primary.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout
        query = f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"
        while self.primary.sql(query) != "sync":
            if time.monotonic() > deadline:
                raise RuntimeError(f"standby {name} did not become synchronous in {timeout}s")
            time.sleep(0.1)
