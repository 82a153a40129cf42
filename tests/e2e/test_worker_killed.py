"""A worker process killed with SIGKILL mid-delivery: its heartbeat stops, another worker
process (or the same one restarted) delivers the change, and nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import aiohttp

from tests.e2e.conftest import pcns_process, wait_for_text
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    Client,
    ServiceFiles,
    eventually,
    fetch_all,
    free_port,
    htpasswd_target,
    htpasswd_verifies,
    wait_terminal,
)

# The lease is far longer than the tests: only the heartbeat (or the pid check) explains a
# takeover.
FAST_LEASE = {
    "lease": "60s",
    "attempt_timeout": "3s",
    "poll_interval": "200ms",
    "heartbeat_interval": "500ms",
    "worker_timeout": "2s",
}


async def kill_once_in_flight(proc: subprocess.Popen[bytes], db_url: str, change_id: str) -> None:
    """SIGKILL ``proc`` as soon as the change's delivery is in flight, and reap it."""

    async def in_flight() -> bool:
        rows = await fetch_all(
            db_url,
            "SELECT state FROM pcns_deliveries WHERE change_id = $1",
            uuid.UUID(change_id),
        )
        return rows[0]["state"] == "in_flight"

    await eventually(in_flight, interval=0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@needs_htpasswd
async def test_sigkilled_worker_loses_its_lease_to_another(tmp_path: Path, db_url: str) -> None:
    """Worker A is killed while delivering; worker B takes the delivery over (A's process is
    gone, its heartbeat stops) and `htpasswd -v` accepts the password it wrote."""
    root = tmp_path / "svc"
    files = ServiceFiles(root, db_url, delivery=FAST_LEASE)
    receiver_cfg = files.write_config("receiver.toml")
    # Worker A's "wiki" is slow (it stands in for an application that hangs mid-write).
    slow_cfg = files.write_config(
        "worker-a.toml",
        server={"listen": f"127.0.0.1:{free_port()}"},
        targets=[{"name": "wiki", "type": "noop", "delay": 2.9}],
    )
    real_cfg = files.write_config(
        "worker-b.toml",
        server={"listen": f"127.0.0.1:{free_port()}"},
        targets=[htpasswd_target("wiki", root / "wiki.htpasswd")],
    )
    with pcns_process("serve", "--config", str(receiver_cfg), "--role", "receiver", cwd=root) as rx:
        wait_for_text(root / "pcns.log", "service_started", rx)
        async with aiohttp.ClientSession() as session:
            client = Client(files, session)
            log_a = root / "worker-a.log"
            with pcns_process(
                "serve", "--config", str(slow_cfg), "--role", "worker", cwd=root, log=log_a
            ) as worker_a:
                wait_for_text(log_a, "service_started", worker_a)
                status, body = await client.send("alice", "Survives-SIGKILL-1")
                assert status == 202

                await kill_once_in_flight(worker_a, db_url, body["id"])
            assert worker_a.returncode == -signal.SIGKILL
            log_b = root / "worker-b.log"
            with pcns_process(
                "serve", "--config", str(real_cfg), "--role", "worker", cwd=root, log=log_b
            ) as worker_b:
                wait_for_text(log_b, "service_started", worker_b)
                assert await wait_terminal(client, body["id"], timeout=30) == {"wiki": "delivered"}
                doc = await client.status(body["id"])
    assert doc["deliveries"][0]["attempts"] == 2
    assert "delivery_lease_expired" in log_b.read_text()
    assert htpasswd_verifies(root / "wiki.htpasswd", "alice", "Survives-SIGKILL-1")


@needs_htpasswd
async def test_a_restarted_process_takes_over_its_previous_incarnation_at_once(
    tmp_path: Path, db_url: str
) -> None:
    """`pcns serve` killed mid-delivery and started again delivers the change in seconds, not
    after worker_timeout (a minute here): it sees that its host's registered process is gone."""
    root = tmp_path / "svc"
    slow = {**FAST_LEASE, "worker_timeout": "60s", "heartbeat_interval": "2s"}
    files = ServiceFiles(root, db_url, delivery=slow)
    hung_cfg = files.write_config(
        "hung.toml", targets=[{"name": "wiki", "type": "noop", "delay": 2.9}]
    )
    real_cfg = files.write_config("real.toml")
    async with aiohttp.ClientSession() as session:
        client = Client(files, session)
        with pcns_process("serve", "--config", str(hung_cfg), cwd=root) as first:
            wait_for_text(root / "pcns.log", "service_started", first)
            status, body = await client.send("alice", "Back-At-Once-1")
            assert status == 202

            await kill_once_in_flight(first, db_url, body["id"])
        log = root / "restarted.log"
        with pcns_process("serve", "--config", str(real_cfg), cwd=root, log=log) as again:
            wait_for_text(log, "service_started", again)
            assert await wait_terminal(client, body["id"], timeout=20) == {"wiki": "delivered"}
    assert "dead_workers_taken_over" in log.read_text()
    assert htpasswd_verifies(root / "wiki.htpasswd", "alice", "Back-At-Once-1")
