"""The service under test: its files and config, run in this process through the composition
root (``pcns.app.running_service``) or as a ``pcns serve`` subprocess.

This is the benchmarks' own small copy of what ``tests/support.py`` has for the tests: bench
does not import the tests package.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import tomli_w

from bench.harness.databases import wait_until

if TYPE_CHECKING:
    from pcns.app import RunningService
    from pcns.config import Role, Settings

POOL_SIZE = 10  # the service's default database.pool_size; the raw ceiling uses the same


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServiceFiles:
    """Keyring, source secret and admin token for every service instance of the run."""

    root: Path

    def __post_init__(self) -> None:
        from pcns.secret_files import new_admin_token, new_webhook_secret, write_private_file
        from vault import create_keyring_file

        self.keyring = self.root / "keyring.json"
        create_keyring_file(self.keyring)
        self.secret_file = self.root / "dc01.whsec"
        write_private_file(self.secret_file, new_webhook_secret())
        self.token_file = self.root / "admin.token"
        write_private_file(self.token_file, new_admin_token())

    def document(
        self,
        db_url: str,
        port: int,
        *,
        delivery: dict[str, Any] | None = None,
        targets: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return {
            "server": {"listen": f"127.0.0.1:{port}"},
            "database": {"url": db_url, "pool_size": POOL_SIZE},
            "vault": {"keyring": str(self.keyring)},
            "admin": {"token_file": str(self.token_file)},
            "delivery": delivery or {},
            "sources": [{"id": "dc01", "secret_file": str(self.secret_file)}],
            "targets": targets or [{"name": "noop", "type": "noop"}],
        }


def settings_of(doc: dict[str, Any]) -> Settings:
    from pcns.config import Settings

    return Settings(**doc)


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """``doc`` as a TOML config file for the ``pcns`` CLI."""
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def in_process_service(settings: Settings, role: Role) -> AsyncIterator[RunningService]:
    """The service in ``role``, started in this process as ``pcns serve`` starts it."""
    from pcns.app import running_service

    async with running_service(settings, role=role) as service:
        yield service


def delivered_count(service: RunningService, target: str) -> float:
    """The service's own count of deliveries to ``target`` recorded as delivered."""
    value = service.metrics.registry.get_sample_value(
        "pcns_deliveries_delivered_total", {"target": target}
    )
    return value or 0.0


async def start_pcns(
    config: Path,
    port: int,
    log: Path,
    *,
    role: Role = "all",
    cwd: Path | None = None,
    timeout: float = 60,  # noqa: ASYNC109 - a start-up deadline, not a cancellation scope
) -> asyncio.subprocess.Process:
    """``pcns serve --role ROLE`` as a subprocess, returned once ``/readyz`` answers 200 (killed
    if it exits or is not ready within ``timeout`` s). Its log lines are appended to ``log``."""
    with log.open("ab") as log_fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pcns",
            "serve",
            "--config",
            str(config),
            "--role",
            role,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_fh,
            cwd=cwd,
        )
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if proc.returncode is not None:
                    raise RuntimeError(f"pcns serve exited with {proc.returncode}; see {log}")
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            try:
                await wait_until(ready, timeout=timeout, interval=0.1)
            except TimeoutError:
                raise RuntimeError(f"pcns serve not ready within {timeout}s; see {log}") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc


@contextlib.asynccontextmanager
async def pcns_serve(
    config: Path, port: int, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``pcns serve --role all`` as a subprocess, yielded once ``/readyz`` answers 200, stopped
    with SIGTERM (killed after 30 s) on exit. Its log lines are appended to ``log``."""
    proc = await start_pcns(config, port, log)
    try:
        yield proc
    finally:
        await stop_pcns(proc)


async def stop_pcns(proc: asyncio.subprocess.Process, *, grace: float = 30) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()
