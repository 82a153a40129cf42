"""A sentinel password, sent through every path (accepted, delivered, refused, failed, still
queued), appears in no log line, no response, no metric and no dump of the database."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from pcns.app import running_service
from pcns.logging import configure_logging
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    PG_DUMP,
    Client,
    ServiceFiles,
    eventually,
    fetch_all,
    hook_key_op,
    htpasswd_target,
    sealed_body,
)

SENTINEL = "Zq-SENTINEL-4d1e-Пароль"


def forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, secret.encode("utf-16-le"), base64.b64encode(raw), raw.hex().encode()]


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging(level="debug", stream=buffer)
    yield buffer
    structlog.reset_defaults()


@needs_htpasswd
async def test_sentinel_never_leaks(
    tmp_path: Path, db_url: str, captured_logs: io.StringIO
) -> None:
    """No captured log, response body, metric, table row or pg_dump contains the password."""
    root = tmp_path / "svc"
    files = ServiceFiles(
        root,
        db_url,
        targets=[
            htpasswd_target("wiki", root / "wiki.htpasswd"),
            {"name": "slow", "type": "noop", "delay": 20.0},
        ],
        delivery={"shutdown_grace": "500ms"},
    )
    seen: list[str] = []
    hook_key = await hook_key_op(files, "create")
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        client = Client(files, session)
        ok = await client.send("alice", SENTINEL)
        # Sealed by a hook: accepted, and refused when bound to another webhook-id.
        for wid, bound in (("msg_sealed_ok", "msg_sealed_ok"), ("msg_sealed_bad", "msg_other")):
            body = sealed_body(hook_key, SENTINEL, webhook_id=bound, user="dave")
            status, _, text = await client.post_raw(
                body, client.signed_headers(body, webhook_id=wid)
            )
            assert status == (202 if wid == bound else 400), text
            seen.append(text)
        failed = await client.send("bad:name", SENTINEL)  # htpasswd refuses ':' permanently
        seen += [json.dumps(ok[1]), json.dumps(failed[1])]
        replay_body = json.dumps({"user": "carol", "password": SENTINEL}).encode()
        headers = client.signed_headers(replay_body, webhook_id="msg_same")
        for _ in range(2):
            seen.append((await client.post_raw(replay_body, headers))[2])
        for bad in (
            json.dumps({"user": "alice", "password": SENTINEL, "extra": SENTINEL}).encode(),
            json.dumps({"user": SENTINEL + "\n", "password": SENTINEL}).encode(),
            SENTINEL.encode(),
        ):
            seen.append((await client.post_raw(bad, client.signed_headers(bad)))[2])
        forged = {**client.signed_headers(replay_body), "webhook-signature": "v1,AAAA"}
        seen.append((await client.post_raw(replay_body, forged))[2])

        async def settled() -> bool:
            states = [
                d["state"]
                for ch in (ok[1], failed[1])
                for d in (await client.status(ch["id"]))["deliveries"]
                if d["target"] == "wiki"
            ]
            return states == ["delivered", "parked"]

        await eventually(settled)
        for ch in (ok[1], failed[1]):
            seen.append(json.dumps(await client.status(ch["id"])))
        async with session.get(files.url + "/metrics") as resp:
            seen.append(await resp.text())
        dump_proc = await asyncio.create_subprocess_exec(
            str(PG_DUMP), "--data-only", "--dbname", db_url, stdout=asyncio.subprocess.PIPE
        )
        dump, _ = await dump_proc.communicate()
        assert dump_proc.returncode == 0
        rows = await fetch_all(
            db_url,
            "SELECT row_to_json(t)::text AS r FROM (SELECT * FROM pcns_changes) t"
            " UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM pcns_deliveries) t",
        )
    assert b"pcns_deliveries" in dump
    in_flight = [r["r"] for r in rows if '"state":"in_flight"' in r["r"]]
    assert in_flight, "the slow target's deliveries should still hold ciphertext at dump time"
    logs = captured_logs.getvalue()
    assert "delivery_attempt" in logs
    assert "http_request" in logs
    haystacks = [logs.encode(), dump, *(s.encode() for s in seen), *(r["r"].encode() for r in rows)]
    for needle in forms(SENTINEL):
        for hay in haystacks:
            assert needle not in hay
