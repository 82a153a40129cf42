"""The embedded PostgreSQL after a SIGKILL of pcns: the next start recovers it, accepted changes
survive and are delivered, and the server stops once the last live pcns on its data directory
exits, leaving no postmaster and no dead pid in pgserver's holder list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from tests.e2e.conftest import PCNS, pcns_process, wait_for_text
from tests.support import Client, ServiceFiles, free_port, wait_terminal


def postmasters(pgdata: Path) -> list[int]:
    """Pids of running postmasters of ``pgdata`` (pg_ctl starts them with ``-D pgdata``)."""
    return [
        p.pid
        for p in psutil.process_iter(["name", "cmdline", "status"])
        if p.info["name"] == "postgres"
        and str(pgdata) in (p.info["cmdline"] or ())
        and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def holders(pgdata: Path) -> list[int]:
    """pgserver's list of the pids holding the server."""
    path = pgdata / ".handle_pids.json"
    pids: list[int] = json.loads(path.read_text()) if path.exists() else []
    return pids


def embedded_files(root: Path) -> tuple[ServiceFiles, dict[str, Any]]:
    """Service files with a no-op target, and a ``[database]`` table for an embedded server."""
    files = ServiceFiles(root, "", targets=[{"name": "wiki", "type": "noop"}])
    return files, {"url": "", "data_dir": root / "data", "pool_size": 4}


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def sigterm(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def migrate(config: Path) -> None:
    """`pcns db migrate`: a short-lived holder of the embedded server."""
    done = subprocess.run(
        [*PCNS, "db", "migrate", "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()


@contextmanager
def unrelated_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that has nothing to do with PostgreSQL, killed on exit."""
    with subprocess.Popen(["sleep", "120"]) as proc:
        try:
            yield proc
        finally:
            proc.kill()


async def test_restart_after_sigkill_recovers_the_embedded_server(tmp_path: Path) -> None:
    """After pcns is SIGKILLed, the next pcns on its data dir starts, delivers the change accepted
    before the kill, and on SIGTERM leaves no postmaster and no dead holder pid behind."""
    files, database = embedded_files(tmp_path)
    pgdata = tmp_path / "data" / "postgres"
    config = files.write_config(database=database)
    log_1, log_2 = tmp_path / "first.log", tmp_path / "second.log"
    async with aiohttp.ClientSession() as session:
        client = Client(files, session)
        # A receiver only, so the change is still pending when it dies.
        with pcns_process(
            "serve", "--config", str(config), "--role", "receiver", cwd=tmp_path, log=log_1
        ) as first:
            wait_for_text(log_1, "service_started", first)
            status, body = await client.send("alice", "Before-The-Kill-1")
            assert status == 202
            sigkill(first)
        # What the kill left: the server still running, held by a pid that is gone.
        assert postmasters(pgdata)
        assert first.pid in holders(pgdata)

        with pcns_process("serve", "--config", str(config), cwd=tmp_path, log=log_2) as second:
            wait_for_text(log_2, "service_started", second)
            assert await wait_terminal(client, body["id"], timeout=30) == {"wiki": "delivered"}
            sigterm(second)
    assert postmasters(pgdata) == []
    assert holders(pgdata) == []
    assert "embedded_postgres_recovered" in log_2.read_text()


async def test_stale_postmaster_pid_does_not_stop_the_start(tmp_path: Path) -> None:
    """A ``postmaster.pid`` left by a power loss, its pid since taken by an unrelated process,
    neither stops pcns from starting and delivering nor gets that process killed at exit."""
    files, database = embedded_files(tmp_path)
    pgdata = tmp_path / "data" / "postgres"
    config = files.write_config(database=database)
    log_1, log_2 = tmp_path / "first.log", tmp_path / "second.log"
    with pcns_process("serve", "--config", str(config), cwd=tmp_path, log=log_1) as first:
        wait_for_text(log_1, "service_started", first)
        left_behind = (pgdata / "postmaster.pid").read_text().splitlines()
        sigterm(first)
    assert not (pgdata / "postmaster.pid").exists()
    with unrelated_process() as unrelated:
        # The file as the dead server wrote it, naming a pid that now runs something else.
        (pgdata / "postmaster.pid").write_text("\n".join([str(unrelated.pid), *left_behind[1:]]))
        async with aiohttp.ClientSession() as session:
            client = Client(files, session)
            with pcns_process("serve", "--config", str(config), cwd=tmp_path, log=log_2) as second:
                wait_for_text(log_2, "service_started", second)
                status, body = await client.send("alice", "After-Power-Loss-1")
                assert status == 202
                assert await wait_terminal(client, body["id"], timeout=30) == {"wiki": "delivered"}
                sigterm(second)
        assert unrelated.poll() is None
    assert postmasters(pgdata) == []


async def test_shared_data_dir_stops_with_the_last_live_process(tmp_path: Path) -> None:
    """A receiver and a worker share one embedded server: a clean exit of another holder keeps it
    running, and once the receiver is SIGKILLed the worker's clean exit stops it."""
    files, database = embedded_files(tmp_path)
    pgdata = tmp_path / "data" / "postgres"
    rx_config = files.write_config("receiver.toml", database=database)
    wk_config = files.write_config(
        "worker.toml", database=database, server={"listen": f"127.0.0.1:{free_port()}"}
    )
    rx_log, wk_log = tmp_path / "receiver.log", tmp_path / "worker.log"
    async with aiohttp.ClientSession() as session:
        client = Client(files, session)
        with (
            pcns_process(
                "serve", "--config", str(rx_config), "--role", "receiver", cwd=tmp_path, log=rx_log
            ) as receiver,
            pcns_process(
                "serve", "--config", str(wk_config), "--role", "worker", cwd=tmp_path, log=wk_log
            ) as worker,
        ):
            wait_for_text(rx_log, "service_started", receiver)
            wait_for_text(wk_log, "service_started", worker)
            # A third holder that comes and goes cleanly: the other two keep the server.
            migrate(rx_config)
            status, body = await client.send("alice", "Shared-Server-1")
            assert status == 202
            assert await wait_terminal(client, body["id"], timeout=30) == {"wiki": "delivered"}

            sigkill(receiver)
            assert postmasters(pgdata)
            sigterm(worker)
    assert postmasters(pgdata) == []
    assert holders(pgdata) == []
