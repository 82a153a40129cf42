"""A worker process killed with SIGKILL mid-delivery: its lease runs out, another worker
process delivers the change, and nothing is lost."""

from __future__ import annotations

import os
import signal
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

FAST_LEASE = {"lease": "6s", "attempt_timeout": "3s", "poll_interval": "200ms"}


@needs_htpasswd
async def test_sigkilled_worker_loses_its_lease_to_another(tmp_path: Path, db_url: str) -> None:
    """Worker A is killed while delivering; worker B takes the delivery over once A's lease
    expires and `htpasswd -v` accepts the password it wrote."""
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

                async def in_flight() -> bool:
                    rows = await fetch_all(
                        db_url,
                        "SELECT state FROM pcns_deliveries WHERE change_id = $1",
                        uuid.UUID(body["id"]),
                    )
                    return rows[0]["state"] == "in_flight"

                await eventually(in_flight, interval=0.02)
                os.kill(worker_a.pid, signal.SIGKILL)
                worker_a.wait()
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
