"""PostgreSQL itself fails under a steady signed load: a crash of the only server, a failover
to a synchronous standby, a server that comes back read-only. The same `pcns serve` processes
(a receiver and a worker) ride it out, and every change they acknowledged with 202 is delivered.

tests/integration/test_database_down.py covers the receiver's answers while a proxy cuts the
network; here the server goes down for real (``pg_ctl stop -m immediate``: no checkpoint,
crash recovery at the next start) and comes back, or is replaced by its promoted standby.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bench.harness.pgcluster import PgCluster, find_bin_dir, missing_requirement, server_user
from tests.e2e.conftest import pcns_process, wait_for_text
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    Client,
    ServiceFiles,
    eventually,
    fetch_all,
    free_port,
    htpasswd_verifies,
    wait_terminal,
)

pytestmark = [pytest.mark.e2e, needs_htpasswd]

FAST_DELIVERY = {
    "attempt_timeout": "2s",
    "lease": "4s",
    "poll_interval": "200ms",
    "backoff_initial": "200ms",
    "backoff_max": "2s",
}
ACCOUNTS = 16
# The receiver asks for Retry-After: 5; the senders come back sooner so the test stays short.
RESEND_PAUSE = 0.2
# Changes acknowledged before the fault, so that it strikes a queue with work in it.
ACKED_BEFORE_FAULT = 40
DELIVERED_STATES = {"delivered", "superseded"}  # superseded: a newer change of the account won


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A private primary, initdb'd in a temporary directory and started; removed afterwards."""
    why = missing_requirement()
    if why is not None:
        if os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
            pytest.fail(f"PCNS_REQUIRE_TOOLS=1 but {why}")
        pytest.skip(why)
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    with PgCluster(bin_dir, server_user()) as pg:
        yield pg


@dataclass
class Load:
    """What the senders saw: every answer with its time, and each account's acknowledged
    changes in the order they were acknowledged."""

    client: Client
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    answers: list[tuple[float, int]] = field(default_factory=list)
    acked: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # user: (id, password)
    problems: list[str] = field(default_factory=list)

    def acked_count(self) -> int:
        return sum(len(changes) for changes in self.acked.values())

    def answered_since(self, since: float, status: int) -> int:
        return sum(1 for at, s in self.answers if at >= since and s == status)

    def first_since(self, since: float, status: int) -> float | None:
        return next((at for at, s in self.answers if at >= since and s == status), None)

    async def send_account(self, user: str) -> None:
        """Change ``user``'s password again and again until ``stop``. Like a hook, resend a
        change that got 503 (same webhook-id, same password) until it is acknowledged, so the
        last 202 of an account is also its newest password."""
        url = self.client.files.url + "/v1/password-changes"
        number = 0
        while not self.stop.is_set():
            number += 1
            password = f"{user}-Pässword-{number}"
            body = json.dumps({"user": user, "password": password}).encode()
            webhook_id = f"msg_{user}_{number}"
            while True:
                headers = self.client.signed_headers(body, webhook_id=webhook_id)
                try:
                    async with self.client.session.post(url, data=body, headers=headers) as resp:
                        status, text = resp.status, await resp.text()
                        retry_after = resp.headers.get("Retry-After")
                except aiohttp.ClientError as exc:
                    self.problems.append(f"{user} #{number}: {type(exc).__name__}: {exc}")
                    return
                self.answers.append((time.monotonic(), status))
                if status == 202:
                    self.acked.setdefault(user, []).append((json.loads(text)["id"], password))
                    break
                if status != 503 or not retry_after:
                    self.problems.append(f"{user} #{number}: {status} {retry_after=} {text}")
                    return
                await asyncio.sleep(RESEND_PAUSE)

    async def run(self, timeout: float) -> None:
        """Run the senders until ``stop``; each finishes its current change first."""
        senders = [self.send_account(f"user{i:02}") for i in range(ACCOUNTS)]
        await asyncio.wait_for(asyncio.gather(*senders), timeout=timeout)


async def assert_every_ack_delivered(load: Load, files: ServiceFiles, db_url: str) -> None:
    """Each account's newest acknowledged password is delivered and `htpasswd -v` accepts it;
    every acknowledged change is stored and all its deliveries are delivered or superseded."""
    assert load.problems == []
    assert {status for _, status in load.answers} <= {202, 503}
    assert len(load.acked) == ACCOUNTS
    for changes in load.acked.values():
        newest_id, _ = changes[-1]
        assert await wait_terminal(load.client, newest_id, timeout=60) == {"wiki": "delivered"}
    htpasswd = files.root / "wiki.htpasswd"
    for user, changes in load.acked.items():
        assert htpasswd_verifies(htpasswd, user, changes[-1][1]), user
    acked_ids = [uuid.UUID(cid) for changes in load.acked.values() for cid, _ in changes]
    assert len(set(acked_ids)) == len(acked_ids)  # each 202 names a change of its own
    rows = await fetch_all(
        db_url,
        "SELECT c.id, d.state FROM pcns_changes c LEFT JOIN pcns_deliveries d"
        " ON d.change_id = c.id WHERE c.id = ANY($1::uuid[])",
        acked_ids,
    )
    assert {r["id"] for r in rows} == set(acked_ids)  # nothing acknowledged went missing
    states = Counter(r["state"] for r in rows)
    assert set(states) <= DELIVERED_STATES, states
    assert len(rows) == len(acked_ids)  # one delivery per change: one target


def log_events(*logs: Path) -> Counter[str]:
    """The warning and error events of the services' logs, counted; fails on any traceback
    (a JSON line's ``exception``, or a stdlib logging line) and on any critical line."""
    events: Counter[str] = Counter()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                assert "Traceback" not in line, log.read_text()[-4000:]
                assert not line.startswith(("ERROR", "CRITICAL")), line
                continue
            assert "exception" not in doc, line
            assert doc.get("level") != "critical", line
            if doc.get("level") in ("warning", "error"):
                events[f"{doc['level']}:{doc.get('event')}"] += 1
    return events


@dataclass
class FaultRun:
    """What a fault looked like from outside: the load, when the fault struck, when the
    database was back (recovered), and when every acknowledged change was delivered."""

    load: Load
    fault_at: float
    recovered_at: float
    delivered_at: float
    events: Counter[str]

    def summary(self) -> str:
        first_202 = self.load.first_since(self.recovered_at, 202)
        assert first_202 is not None
        return (
            f"{self.load.acked_count()} changes acknowledged,"
            f" {self.load.answered_since(self.fault_at, 503)} answers 503 (none other);"
            f" database back {self.recovered_at - self.fault_at:.1f}s after the fault;"
            f" first 202 {first_202 - self.recovered_at:.2f}s and all delivered"
            f" {self.delivered_at - self.recovered_at:.1f}s after that; log: {dict(self.events)}"
        )


async def ride_out(
    files: ServiceFiles, db_url_after: str, fault: Callable[[], Awaitable[float]]
) -> FaultRun:
    """Run a receiver and a separate worker process under load; strike with ``fault`` (it
    returns once the database is back, with that moment); keep the load on for a while; then
    check that every acknowledged change was delivered, by the same two processes."""
    receiver_cfg = files.write_config("receiver.toml")
    worker_cfg = files.write_config("worker.toml", server={"listen": f"127.0.0.1:{free_port()}"})
    rx_log, wk_log = files.root / "receiver.log", files.root / "worker.log"
    with (
        pcns_process(
            "serve", "--config", str(receiver_cfg), "--role", "receiver", cwd=files.root, log=rx_log
        ) as receiver,
        pcns_process(
            "serve", "--config", str(worker_cfg), "--role", "worker", cwd=files.root, log=wk_log
        ) as worker,
    ):
        wait_for_text(rx_log, "service_started", receiver)
        wait_for_text(wk_log, "service_started", worker)
        async with aiohttp.ClientSession() as session:
            load = Load(Client(files, session))
            senders = asyncio.create_task(load.run(90))

            async def enough_acked() -> bool:
                return load.acked_count() >= ACKED_BEFORE_FAULT or senders.done()

            await eventually(enough_acked, timeout=30)
            fault_at = time.monotonic()
            recovered_at = await fault()

            async def accepting_again() -> bool:
                return load.first_since(recovered_at, 202) is not None or senders.done()

            await eventually(accepting_again, timeout=30)
            await asyncio.sleep(2)  # more load on the recovered database
            load.stop.set()
            await senders
            await assert_every_ack_delivered(load, files, db_url_after)
            delivered_at = time.monotonic()
        assert receiver.poll() is None, "the receiver exited"
        assert worker.poll() is None, "the worker exited"
    events = log_events(rx_log, wk_log)
    return FaultRun(load, fault_at, recovered_at, delivered_at, events)


async def test_crash_of_the_database_loses_no_acknowledged_change(
    tmp_path: Path, cluster: PgCluster
) -> None:
    """PostgreSQL crashes (immediate stop) under load and restarts: meanwhile the receiver
    answers only 503 with Retry-After, and afterwards the same processes deliver every change
    they acknowledged."""
    pg = cluster.primary
    files = ServiceFiles(tmp_path / "svc", pg.url, delivery=FAST_DELIVERY)

    async def crash_and_restart() -> float:
        await asyncio.to_thread(pg.stop, "immediate")
        await asyncio.sleep(3)  # the senders keep sending into the outage
        await asyncio.to_thread(pg.start)
        return time.monotonic()

    run = await ride_out(files, pg.url, crash_and_restart)
    assert run.load.answered_since(run.fault_at, 503) > 0  # the outage was seen
    print(f"\ncrash and restart: {run.summary()}")


async def test_failover_to_a_synchronous_standby_loses_no_acknowledged_change(
    tmp_path: Path, cluster: PgCluster
) -> None:
    """With a synchronous standby and a multi-host database.url (target_session_attrs=
    read-write), the primary crashing and the standby being promoted under load loses no
    acknowledged change, and the same processes follow the new primary."""
    standby = cluster.add_standby("standby1")
    cluster.make_synchronous(standby)
    old = cluster.primary
    url = (
        f"postgresql://postgres@127.0.0.1:{old.port},127.0.0.1:{standby.port}/postgres"
        "?target_session_attrs=read-write"
    )
    files = ServiceFiles(tmp_path / "svc", url, delivery=FAST_DELIVERY)

    async def crash_and_promote() -> float:
        await asyncio.to_thread(old.stop, "immediate")
        await asyncio.sleep(1)  # no primary: only the read-only standby answers
        await asyncio.to_thread(standby.promote)
        return time.monotonic()

    run = await ride_out(files, standby.url, crash_and_promote)
    assert run.load.answered_since(run.fault_at, 503) > 0  # no primary for a while
    assert not old.running()  # the old primary took no part in the recovery
    print(f"\nfailover: {run.summary()}")


async def test_database_back_read_only_is_answered_like_an_outage(
    tmp_path: Path, cluster: PgCluster
) -> None:
    """A server that comes back from a clean restart read-only, which a database.url with
    target_session_attrs=read-write refuses to use, is answered 503 like an outage, and the
    same processes resume once it takes writes again."""
    pg = cluster.primary
    url = pg.url + "?target_session_attrs=read-write"
    files = ServiceFiles(tmp_path / "svc", url, delivery=FAST_DELIVERY)

    async def restart_read_only() -> float:
        await asyncio.to_thread(pg.sql, "ALTER SYSTEM SET default_transaction_read_only = on")
        await asyncio.to_thread(pg.restart, "fast")
        await asyncio.sleep(3)  # up, but refusing writes
        await asyncio.to_thread(pg.sql, "ALTER SYSTEM RESET default_transaction_read_only")
        await asyncio.to_thread(pg.sql, "SELECT pg_reload_conf()")
        return time.monotonic()

    run = await ride_out(files, pg.url, restart_read_only)
    assert run.load.answered_since(run.fault_at, 503) > 0
    print(f"\nread-only restart: {run.summary()}")
