"""Scratch databases: a fresh one per timed run, checkpointed and free of autovacuum workers
before its window opens, dropped as soon as the run is done."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.harness.cpu import wait_for_quiet_machine


def with_database(server_url: str, name: str) -> str:
    """``server_url`` pointing at database ``name``."""
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


async def wait_until(
    probe: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    interval: float,
) -> None:
    """Poll ``probe`` (plain or async) every ``interval`` s until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def fetch_count(url: str, query: str, *args: Any) -> int:
    """The single integer ``query`` returns, on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval(query, *args)
        return value
    finally:
        await conn.close()


@dataclass
class Databases:
    """Scratch databases on one server: a fresh one per measurement, all dropped at the end."""

    server_url: str
    max_background: float | None = None  # cores used by other processes; None: do not wait
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    names: list[str] = field(default_factory=list)

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self, label: str, *, template: str | None = None) -> str:
        """A fresh database; ``template``: a copy of that one (by URL), e.g. a prepared backlog."""
        name = f"pcns_bench_{self.token}_{len(self.names)}_{label}"
        copy = f' TEMPLATE "{urlsplit(template).path.lstrip("/")}"' if template else ""
        await self._admin(f'CREATE DATABASE "{name}"{copy}')
        self.names.append(name)
        return with_database(self.server_url, name)

    async def drop(self, url: str) -> None:
        """Drop as soon as a measurement is done, so autovacuum never works on it later."""
        name = urlsplit(url).path.lstrip("/")
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop_all(self) -> None:
        for name in self.names:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def quiesce(self, url: str, *, analyze: bool) -> None:
        """Same starting line for every timed run: checkpointed, no autovacuum worker left to
        compete for the two cores and, with ``analyze``, vacuumed and analyzed.

        Only analyze a database whose tables already hold what the run works on (a queued
        backlog): statistics of a nearly empty table would mislead the planner for the whole run.
        """
        conn = await asyncpg.connect(url)
        try:
            if analyze:
                await conn.execute("VACUUM ANALYZE")
            await conn.execute("CHECKPOINT")

            async def no_autovacuum() -> bool:
                busy: int = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                )
                return busy == 0

            with contextlib.suppress(TimeoutError):
                await wait_until(no_autovacuum, timeout=30, interval=0.1)
        finally:
            await conn.close()
        if self.max_background is not None:
            await wait_for_quiet_machine(self.max_background, timeout=60)
