"""SIGHUP on a running `pcns serve`: a new target is routed to without a restart and without
losing the change in flight; a change that needs a restart is refused and the running
configuration stays; a removed target's deliveries stay queued."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from tests.e2e.conftest import pcns_process, wait_for_text
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    Client,
    ServiceFiles,
    admin_call,
    delivery_states,
    eventually,
    free_port,
    htpasswd_target,
    htpasswd_verifies,
    wait_terminal,
)

SLOW = {"name": "slow", "type": "noop", "delay": 2.0}


@needs_htpasswd
async def test_sighup_adds_a_target_refuses_a_restart_key_and_keeps_removed_work(
    tmp_path: Path, db_url: str
) -> None:
    """A target added by SIGHUP gets the next change (checked with htpasswd -v) while the change
    in flight finishes; changing server.listen is refused, naming the key, and the service goes
    on; a target removed by SIGHUP keeps its pending delivery queued."""
    root = tmp_path / "svc"
    files = ServiceFiles(root, db_url, targets=[SLOW], delivery={"poll_interval": "200ms"})
    config = files.write_config()
    log = root / "pcns.log"
    wiki = htpasswd_target("wiki", root / "wiki.htpasswd")
    with pcns_process("serve", "--config", str(config), cwd=root) as proc:
        wait_for_text(log, "service_started", proc)
        async with aiohttp.ClientSession() as session:
            client = Client(files, session)
            _, first = await client.send("alice", "Before-Reload-1!")

            async def in_flight() -> bool:
                return (await delivery_states(client, first["id"])) == {"slow": "in_flight"}

            await eventually(in_flight)
            files.targets = [SLOW, wiki]
            files.write_config(config.name)
            proc.send_signal(signal.SIGHUP)
            wait_for_text(log, "config_reloaded", proc)
            assert await wait_terminal(client, first["id"]) == {"slow": "delivered"}
            _, second = await client.send("bob", "After-Reload-2!")
            assert await wait_terminal(client, second["id"]) == {
                "slow": "delivered",
                "wiki": "delivered",
            }
            assert htpasswd_verifies(root / "wiki.htpasswd", "bob", "After-Reload-2!")

            # A key that needs a restart: refused, named, and the service goes on as it was.
            files.write_config(config.name, server={"listen": f"127.0.0.1:{free_port()}"})
            proc.send_signal(signal.SIGHUP)
            wait_for_text(log, "config_reload_refused", proc)
            assert "server.listen: changing this needs a restart" in log.read_text()
            files.write_config(config.name)  # back to the running configuration

            # A removed target's delivery stays queued and visible.
            status, _ = await admin_call(client, "PUT", "/v1/targets/slow/hold", {})
            assert status == 200
            _, third = await client.send("carol", "Removed-Target-3!")

            async def wiki_done() -> bool:
                states = await delivery_states(client, third["id"])
                return states == {"slow": "pending", "wiki": "delivered"}

            await eventually(wiki_done)
            files.targets = [wiki]
            files.write_config(config.name)
            text_before = log.read_text().count("config_reloaded")
            proc.send_signal(signal.SIGHUP)

            async def reloaded_again() -> bool:
                return log.read_text().count("config_reloaded") > text_before

            await eventually(reloaded_again)
            status, _ = await admin_call(client, "DELETE", "/v1/targets/slow/hold")
            assert status == 200
            await asyncio.sleep(1.5)  # several polls: a worker that had "slow" would deliver it
            states = await delivery_states(client, third["id"])
            assert states == {"slow": "pending", "wiki": "delivered"}
            assert proc.poll() is None
    assert htpasswd_verifies(root / "wiki.htpasswd", "carol", "Removed-Target-3!")
    reloaded = [line for line in log.read_text().splitlines() if "config_reloaded" in line]
    assert '"targets_added":["wiki"]' in reloaded[0]
    assert '"targets_removed":["slow"]' in reloaded[-1]
