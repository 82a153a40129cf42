"""The signed intake against a real PostgreSQL: who may send, what is refused, what is stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from pcns.app import RunningService
from tests.support import Client, ServiceFiles, fetch_all

SENTINEL = "Sentinel-Pw-7f3a9c"


async def queued(files: ServiceFiles) -> tuple[int, int]:
    rows = await fetch_all(
        files.db_url,
        "SELECT (SELECT count(*) FROM pcns_changes) AS c,"
        " (SELECT count(*) FROM pcns_deliveries) AS d",
    )
    return rows[0]["c"], rows[0]["d"]


def body_of(**fields: object) -> bytes:
    return json.dumps({"user": "alice", "password": SENTINEL, **fields}).encode()


async def test_accepted_change_is_stored_encrypted(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """A 202 means the change and its delivery rows are committed, with ciphertext only."""
    status, body = await client.send("alice", SENTINEL, upn="alice@corp.example", sid="S-1-5-21-1")
    assert status == 202
    rows = await fetch_all(
        files.db_url,
        "SELECT d.*, c.upn FROM pcns_deliveries d JOIN pcns_changes c ON c.id = d.change_id"
        " WHERE c.id = $1",
        __import__("uuid").UUID(body["id"]),
    )
    assert len(rows) == 1
    assert rows[0]["upn"] == "alice@corp.example"
    assert SENTINEL.encode() not in (rows[0]["ciphertext"] or b"")


@pytest.mark.parametrize(
    ("headers_change", "reason"),
    [
        ({"webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "bad-signature"),
        ({"pcns-source": "dc99"}, "unknown-source"),
        ({"pcns-source": ""}, "unknown-source"),
        ({"webhook-id": ""}, "missing-headers"),
    ],
)
async def test_bad_signatures_and_sources_get_401(
    service: RunningService,
    client: Client,
    files: ServiceFiles,
    headers_change: dict[str, str],
    reason: str,
) -> None:
    """Forged, unsigned or unknown-source requests are refused and nothing is queued."""
    body = body_of()
    headers = {**client.signed_headers(body), **headers_change}
    status, problem, text = await client.post_raw(body, headers)
    assert status == 401
    assert problem["type"] == f"urn:pcns:problem:{reason}"
    assert SENTINEL not in text
    assert await queued(files) == (0, 0)


async def test_stale_timestamp_gets_401(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """A validly signed request from ten minutes ago is refused as stale."""
    body = body_of()
    headers = client.signed_headers(body, at=datetime.now(UTC) - timedelta(minutes=10))
    status, problem, _ = await client.post_raw(body, headers)
    assert (status, problem["type"]) == (401, "urn:pcns:problem:stale-timestamp")
    assert await queued(files) == (0, 0)


async def test_signed_with_another_secret_gets_401(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """A request signed with a secret pcns does not hold for that source is refused."""
    from pcns.secret_files import new_webhook_secret

    body = body_of()
    status, _, _ = await client.post_raw(
        body, client.signed_headers(body, secret=new_webhook_secret())
    )
    assert status == 401
    assert await queued(files) == (0, 0)


async def test_replay_returns_same_answer_and_queues_nothing(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """The same (source, webhook-id) sent again, even concurrently, is answered identically once."""
    import asyncio

    first = await client.send("alice", SENTINEL, webhook_id="msg_replay")
    again = await client.send("alice", SENTINEL, webhook_id="msg_replay")
    assert first[0] == again[0] == 202
    assert first[1] == again[1]
    racing = await asyncio.gather(
        *(client.send("bob", SENTINEL, webhook_id="msg_race") for _ in range(10))
    )
    assert {json.dumps(r[1]) for r in racing} == {json.dumps(racing[0][1])}
    assert await queued(files) == (2, 2)


async def test_body_too_large_gets_413_even_without_content_length(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """The 16 KiB cap holds on the stream, also for chunked bodies with no Content-Length."""
    big = body_of(domain="D" * 200, sid="S-1-5") + b" " * 17000
    status, problem, _ = await client.post_raw(big, client.signed_headers(big))
    assert (status, problem["type"]) == (413, "urn:pcns:problem:too-large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 1024

    headers = client.signed_headers(b"")
    async with client.session.post(
        files.url + "/v1/password-changes", data=chunks(), headers=headers
    ) as resp:
        assert resp.status == 413
        assert "Content-Length" not in resp.request_info.headers
    assert await queued(files) == (0, 0)


async def test_chunked_body_within_the_cap_is_accepted(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """A body sent in chunks, with no Content-Length, is read whole and accepted."""
    body = body_of(domain="CORP")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    async with client.session.post(
        files.url + "/v1/password-changes", data=chunks(), headers=client.signed_headers(body)
    ) as resp:
        assert resp.status == 202
        assert "Content-Length" not in resp.request_info.headers
    assert await queued(files) == (1, 1)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_wrong_content_type_gets_415(
    service: RunningService, client: Client, files: ServiceFiles, ctype: str
) -> None:
    """Only application/json bodies are read."""
    body = body_of()
    headers = {**client.signed_headers(body), "content-type": ctype}
    status, problem, _ = await client.post_raw(body, headers)
    assert (status, problem["type"]) == (415, "urn:pcns:problem:unsupported-media-type")
    assert await queued(files) == (0, 0)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"not json " + SENTINEL.encode(), "JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"' + SENTINEL.encode() + b'"', "JSON object"),
        (json.dumps({"user": "alice"}).encode(), "password"),
        (json.dumps({"password": SENTINEL}).encode(), "user"),
        (json.dumps({"user": "", "password": SENTINEL}).encode(), "user"),
        (json.dumps({"user": "alice", "password": SENTINEL + "\x00"}).encode(), "password"),
        (json.dumps({"user": "alice", "password": 12345678}).encode(), "password"),
        (json.dumps({"user": "al\nice", "password": SENTINEL}).encode(), "user"),
        (body_of(changed_at="yesterday"), "changed_at"),
        (body_of(changed_at="2026-11-28T10:00:00"), "changed_at"),
        (body_of(sid="not-a-sid"), "sid"),
        (body_of(**{SENTINEL: "x"}), "allowed fields"),
        (b"\xff\xfe" + SENTINEL.encode(), "UTF-8"),
    ],
)
async def test_invalid_bodies_get_400_naming_the_field(
    service: RunningService, client: Client, files: ServiceFiles, body: bytes, names: str
) -> None:
    """A signed but invalid body is refused with 400 naming the field, never echoing a value."""
    status, problem, text = await client.post_raw(body, client.signed_headers(body))
    assert status == 400
    assert problem["type"] == "urn:pcns:problem:invalid-body"
    assert names in problem["detail"]
    assert SENTINEL not in text
    assert "12345678" not in text
    assert await queued(files) == (0, 0)


async def test_unmatched_user_is_acknowledged_with_no_deliveries(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """A user every target excludes (case-insensitively) is accepted with no deliveries."""
    status, body = await client.send("KRBTGT", SENTINEL)
    assert status == 202
    assert body["deliveries"] == []
    assert await queued(files) == (1, 0)


async def test_status_needs_the_admin_token(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """Delivery status is visible with the admin token only, and never shows a secret."""
    _, body = await client.send("alice", SENTINEL)
    url = f"{files.url}/v1/password-changes/{body['id']}"
    async with client.session.get(url) as resp:
        assert resp.status == 401
    async with client.session.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    doc = await client.status(body["id"])
    assert doc["user"] == "alice"
    assert doc["deliveries"][0]["target"] == "wiki"
    assert SENTINEL not in json.dumps(doc)
    async with client.session.get(
        f"{files.url}/v1/password-changes/not-a-uuid",
        headers={"Authorization": f"Bearer {files.admin_token}"},
    ) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


async def test_health_readiness_and_metrics(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """Health, readiness and Prometheus metrics answer; rejections are counted by reason."""
    body = body_of()
    await client.post_raw(body, {**client.signed_headers(body), "pcns-source": "nope"})
    await client.send("alice", SENTINEL)
    async with aiohttp.ClientSession(base_url=files.url) as s:
        async with s.get("/healthz") as r:
            assert r.status == 200
        async with s.get("/readyz") as r:
            assert r.status == 200
            assert (await r.json())["checks"] == {"database": "ok", "keyring": "ok"}
        async with s.get("/metrics") as r:
            text = await r.text()
        async with s.get("/no/such/path") as r:
            assert r.status == 404
            assert r.content_type == "application/problem+json"
        async with s.put("/v1/password-changes") as r:
            assert r.status == 405
    assert 'pcns_changes_rejected_total{reason="unknown_source"} 1.0' in text
    assert 'pcns_changes_accepted_total{source="dc01"} 1.0' in text
    assert SENTINEL not in text


async def test_queue_depth_and_age_metrics(files: ServiceFiles) -> None:
    """With no worker running, queued deliveries show up as depth and oldest-pending age."""
    from pcns.app import running_service
    from tests.support import eventually

    async with (
        running_service(files.settings(), role="receiver"),
        aiohttp.ClientSession() as session,
    ):
        client = Client(files, session)
        for user in ("alice", "bob", "carol"):
            await client.send(user, SENTINEL)

        async def depth_seen() -> str | None:
            async with session.get(files.url + "/metrics") as r:
                text = await r.text()
            return text if 'pcns_queue_depth{state="pending",target="wiki"} 3.0' in text else None

        text = await eventually(depth_seen, timeout=15)
    assert 'pcns_queue_depth{state="in_flight",target="wiki"} 0.0' in text
    age = next(
        line
        for line in text.splitlines()
        if line.startswith('pcns_queue_oldest_pending_seconds{target="wiki"}')
    )
    assert float(age.split()[-1]) > 0
