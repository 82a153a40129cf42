"""Sealed changes at the intake against a real PostgreSQL: opened, routed and delivered; refused
with a problem and nothing stored when tampered, replayed into another change, wrongly bound or
sealed to an unknown key; hook keys created, rotated, retired online."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from pcns.app import RunningService, running_service
from pcns.database import create_pool
from pcns.keys import hook_admin
from pcns.logging import configure_logging
from pcns.queue.key_store import KeyStore
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    Client,
    ServiceFiles,
    eventually,
    fetch_all,
    hook_key_op,
    htpasswd_verifies,
    sealed_body,
    wait_terminal,
)
from vault import FileKek, HookPublicKey

SENTINEL = "Sealed-Sentinel-Pw-41c9"
UNICODE = "Пароль-密码-🔑-e\u0301"


@pytest.fixture
async def hook_key(files: ServiceFiles) -> HookPublicKey:
    return await hook_key_op(files, "create")


@pytest.fixture
async def sealed_service(
    files: ServiceFiles, hook_key: HookPublicKey
) -> AsyncIterator[RunningService]:
    """The service started after the first hook key exists."""
    async with running_service(files.settings()) as svc:
        yield svc


async def post(client: Client, body: bytes, webhook_id: str) -> tuple[int, Any, str]:
    return await client.post_raw(body, client.signed_headers(body, webhook_id=webhook_id))


async def counts(files: ServiceFiles) -> tuple[int, int]:
    rows = await fetch_all(
        files.db_url,
        "SELECT (SELECT count(*) FROM pcns_changes) AS c,"
        " (SELECT count(*) FROM pcns_deliveries) AS d",
    )
    return rows[0]["c"], rows[0]["d"]


@needs_htpasswd
@pytest.mark.parametrize("password", [SENTINEL, UNICODE])
async def test_sealed_change_is_delivered(
    sealed_service: RunningService,
    client: Client,
    files: ServiceFiles,
    hook_key: HookPublicKey,
    password: str,
) -> None:
    """A change sealed to the hook key is opened at intake and reaches the htpasswd target."""
    wid = f"msg_{uuid.uuid4().hex}"
    status, body, text = await post(client, sealed_body(hook_key, password, webhook_id=wid), wid)
    assert status == 202, text
    assert await wait_terminal(client, body["id"]) == {"wiki": "delivered"}
    assert htpasswd_verifies(files.root / "wiki.htpasswd", "alice", password)


@pytest.mark.parametrize(
    "case",
    ["tampered", "other_webhook_id", "other_user", "other_source", "unknown_key", "too_long"],
)
async def test_sealed_change_that_does_not_open_is_refused(
    sealed_service: RunningService,
    client: Client,
    files: ServiceFiles,
    hook_key: HookPublicKey,
    case: str,
) -> None:
    """A sealed body that does not open (tampered, bound elsewhere, unknown key) or opens to a
    password that breaks the password rules is a 400 problem that names the field and echoes
    nothing, and nothing is stored."""
    wid = f"msg_{uuid.uuid4().hex}"
    key, seal_kwargs = hook_key, {}
    if case == "other_webhook_id":
        seal_kwargs = {"webhook_id": "msg_" + uuid.uuid4().hex}
    if case == "other_user":
        seal_kwargs = {"sealed_user": "mallory"}
    if case == "other_source":
        seal_kwargs = {"source": "dc02"}
    if case == "unknown_key":
        key = HookPublicKey("hpk-20260101000000-abcdef", hook_key.point)
    password = SENTINEL * 50 if case == "too_long" else SENTINEL  # over 1,024 characters
    body = sealed_body(key, password, **{"webhook_id": wid, **seal_kwargs})
    if case == "tampered":
        doc = json.loads(body)
        raw = bytearray(base64.b64decode(doc["sealed"]["ciphertext"]))
        raw[-1] ^= 1
        doc["sealed"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
        body = json.dumps(doc).encode()
    status, problem, text = await post(client, body, wid)
    assert status == 400, text
    assert problem["type"] == "urn:pcns:problem:sealed-invalid"
    field = {"unknown_key": "sealed.key_id", "too_long": "sealed: the opened password"}.get(
        case, "sealed: does not open"
    )
    assert problem["detail"].startswith(field)
    assert SENTINEL not in text
    assert await counts(files) == (0, 0)


async def test_sealed_blob_replayed_into_a_new_change_is_refused(
    sealed_service: RunningService, client: Client, files: ServiceFiles, hook_key: HookPublicKey
) -> None:
    """A sealed value captured from one change and sent again under a new webhook-id does not
    open; the original resent under its own id is answered from the first answer, queuing
    nothing more."""
    wid = f"msg_{uuid.uuid4().hex}"
    body = sealed_body(hook_key, SENTINEL, webhook_id=wid)
    first = await post(client, body, wid)
    assert first[0] == 202
    replay = await post(client, body, f"msg_{uuid.uuid4().hex}")
    assert replay[0] == 400
    assert replay[1]["type"] == "urn:pcns:problem:sealed-invalid"
    resent = await post(client, body, wid)
    assert resent[0] == 202
    assert resent[1]["id"] == first[1]["id"]
    assert await counts(files) == (1, 1)


async def test_malformed_sealed_fields_are_named(
    sealed_service: RunningService, client: Client, files: ServiceFiles, hook_key: HookPublicKey
) -> None:
    """Both password and sealed, neither, bad base64 or a short blob each get a 400 naming the
    field."""
    cases = {
        "both": {"password": SENTINEL, "sealed": {"key_id": hook_key.key_id, "ciphertext": "AA=="}},
        "neither": {},
        "bad_base64": {"sealed": {"key_id": hook_key.key_id, "ciphertext": "!!!"}},
        "short": {"sealed": {"key_id": hook_key.key_id, "ciphertext": "AAAA"}},
        "bad_key_id": {"sealed": {"key_id": "dek-1", "ciphertext": "AAAA"}},
    }
    for name, fields in cases.items():
        body = json.dumps({"user": "alice", **fields}).encode()
        wid = f"msg_{uuid.uuid4().hex}"
        status, problem, text = await post(client, body, wid)
        assert status == 400, (name, text)
        assert "sealed" in problem["detail"] or "password" in problem["detail"], name
        assert SENTINEL not in text
    assert await counts(files) == (0, 0)


@pytest.fixture
def sealed_only_files(tmp_path: Path, db_url: str) -> ServiceFiles:
    return ServiceFiles(tmp_path / "svc", db_url, source={"require_sealed": True})


async def test_source_that_requires_sealing_refuses_plaintext(
    sealed_only_files: ServiceFiles,
) -> None:
    """With ``require_sealed``, a plaintext password is refused 403 (the hook keeps it) and a
    sealed one is accepted."""
    files = sealed_only_files
    key = await hook_key_op(files, "create")
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        client = Client(files, session)
        status, problem = await client.send("alice", SENTINEL)
        assert status == 403
        assert problem["type"] == "urn:pcns:problem:sealed-required"
        assert await counts(files) == (0, 0)
        wid = f"msg_{uuid.uuid4().hex}"
        status, _, text = await post(client, sealed_body(key, SENTINEL, webhook_id=wid), wid)
        assert status == 202, text


async def test_rotation_and_retirement_reach_a_running_receiver(
    sealed_service: RunningService, client: Client, files: ServiceFiles, hook_key: HookPublicKey
) -> None:
    """After a rotation both keys open; after the old one is retired, what is sealed to it is
    refused while the new one still opens; the audit log records each step."""
    new = await hook_key_op(files, "rotate")

    async def accepted(key: HookPublicKey) -> bool:
        wid = f"msg_{uuid.uuid4().hex}"
        status, _, _ = await post(client, sealed_body(key, SENTINEL, webhook_id=wid), wid)
        return status == 202

    assert await eventually(lambda: accepted(new), timeout=15)
    assert await accepted(hook_key)
    await hook_key_op(files, "retire", hook_key.key_id)

    async def old_refused() -> bool:
        return not await accepted(hook_key)

    assert await eventually(old_refused, timeout=15)
    assert await accepted(new)
    actions = [
        r["action"]
        for r in await fetch_all(files.db_url, "SELECT action FROM pcns_key_audit ORDER BY id")
    ]
    assert [a for a in actions if a.startswith("hook-")] == [
        "hook-create",
        "hook-rotate",
        "hook-retire",
    ]


async def test_hook_key_operations_refuse_what_would_lose_access(files: ServiceFiles) -> None:
    """The current hook key cannot be retired, a second create is refused, and rotate-kek
    rewraps hook keys so they still open after the old KEK is pruned."""
    from pcns.keys import admin

    first = await hook_key_op(files, "create")
    with pytest.raises(hook_admin.HookKeyError, match="rotate"):
        await hook_key_op(files, "create")
    with pytest.raises(hook_admin.HookKeyError, match="current"):
        await hook_key_op(files, "retire", first.key_id)
    async with create_pool(files.db_url, size=2, wait=5) as db:
        await admin.rotate_kek(KeyStore(db), FileKek(files.keyring), actor="test")
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        client = Client(files, session)
        wid = f"msg_{uuid.uuid4().hex}"
        status, _, text = await post(client, sealed_body(first, SENTINEL, webhook_id=wid), wid)
        assert status == 202, text


async def test_only_receivers_unwrap_hook_keys(
    files: ServiceFiles, hook_key: HookPublicKey
) -> None:
    """A receiver loads the hook keys' private halves; a worker-only process never does."""
    seen = {}
    for role in ("worker", "receiver"):
        buffer = io.StringIO()
        configure_logging(level="info", stream=buffer)
        try:
            async with running_service(files.settings(), role=role):
                pass
        finally:
            structlog.reset_defaults()
        seen[role] = "hook_keys_loaded" in buffer.getvalue()
    assert seen == {"worker": False, "receiver": True}
