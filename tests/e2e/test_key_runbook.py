"""The security team's runbook, command by command, against a running service under load:
rotate -> rewrap -> retire while changes keep flowing in and deliveries flowing out."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import aiohttp

from pcns.app import running_service
from tests.support import Client, ServiceFiles, fetch_all, wait_terminal


async def pcns_keys(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pcns",
        "keys",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    assert b"Traceback" not in err
    return proc.returncode, out.decode()


async def sealed_by(db_url: str, key_id: str) -> int:
    rows = await fetch_all(
        db_url,
        "SELECT count(*) AS n FROM pcns_deliveries WHERE ciphertext IS NOT NULL AND key_id = $1",
        key_id,
    )
    n: int = rows[0]["n"]
    return n


async def test_runbook_under_load(tmp_path: Path, db_url: str) -> None:
    """No delivery fails, is lost or is retried, no process restarts, and afterwards the old
    data key is destroyed and nothing queued is under it."""
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[{"name": "wiki", "type": "noop", "delay": 0.15}],
        delivery={"workers": 4},
        vault={"refresh_interval": "1s"},
    )
    config = str(files.write_config())
    accepted: list[tuple[str, str | None]] = []
    stop = asyncio.Event()

    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        client = Client(files, session)

        async def load() -> None:
            n = 0
            while not stop.is_set():
                status, body = await client.send(f"user{n}", f"Load-Pw-{n}")
                assert status == 202
                rows = await fetch_all(
                    db_url,
                    "SELECT key_id FROM pcns_deliveries WHERE change_id = $1",
                    uuid.UUID(body["id"]),
                )
                accepted.append((body["id"], rows[0]["key_id"]))
                n += 1
                await asyncio.sleep(0.02)

        sender = asyncio.create_task(load())
        await asyncio.sleep(1.5)
        old = accepted[0][1]
        assert old is not None
        assert await sealed_by(db_url, old) > 0, "the load should keep a backlog queued"

        code, out = await pcns_keys("rotate", "--config", config, "--actor", "sec@corp")
        assert code == 0, out
        new = out.split()[2]
        rotated_at = len(accepted)
        await asyncio.sleep(1.0)
        # (the one request in flight while the command returned may still carry the old key)
        # (the one request in flight while the command returned may still carry the old key)
        assert all(k == new for _, k in accepted[rotated_at + 1 :]), "new changes use the new key"

        code, out = await pcns_keys("rewrap", "--config", config, "--actor", "sec@corp")
        assert code == 0, out
        assert await sealed_by(db_url, old) == 0

        code, out = await pcns_keys("retire", old, "--config", config, "--actor", "sec@corp")
        assert code == 0, out
        code, listing = await pcns_keys("list", "--config", config)
        await asyncio.sleep(1.0)
        stop.set()
        await sender
        finals = [await wait_terminal(client, cid, timeout=60) for cid, _ in accepted]
    assert {tuple(f.values()) for f in finals} == {("delivered",)}
    attempts = await fetch_all(
        db_url, "SELECT max(attempts) AS m, count(*) AS n FROM pcns_deliveries"
    )
    assert attempts[0]["n"] == len(accepted)
    assert attempts[0]["m"] == 1, "no delivery needed a retry"
    keys = await fetch_all(db_url, "SELECT id, state, wrapped FROM pcns_data_keys")
    by_id = {k["id"]: k for k in keys}
    assert by_id[old]["state"] == "retired"
    assert by_id[old]["wrapped"] is None
    assert by_id[new]["state"] == "primary"
    assert f"{old}" in listing
    assert "retired" in listing
