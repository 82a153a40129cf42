"""Key custody on a running service: data keys wrapped in PostgreSQL, rotation picked up without
a restart, rewrap, retire, KEK rotation, automatic rotation, and tamper detection."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from pcns.app import build_kek, running_service
from pcns.keys import admin
from pcns.queue.key_store import KeyStore
from tests.support import PG_DUMP, Client, ServiceFiles, eventually, fetch_all, wait_terminal
from vault import KekError, create_keyring_file

SLOW = {"name": "wiki", "type": "noop", "delay": 0.05}


@asynccontextmanager
async def service(files: ServiceFiles) -> AsyncIterator[tuple[Client, KeyStore]]:
    async with running_service(files.settings()) as svc, aiohttp.ClientSession() as session:
        yield Client(files, session), svc.key_store


def make_files(tmp_path: Path, db_url: str, **vault: Any) -> ServiceFiles:
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[SLOW])
    files.vault = {"refresh_interval": "300ms", **vault}
    return files


async def rotate_now(files: ServiceFiles, store: KeyStore, propagation: float) -> str:
    """Rotate as `pcns keys rotate` does, with this service's KEK."""
    kek = build_kek(files.settings())
    try:
        return await admin.rotate(store, kek, actor="t", propagation=propagation)
    finally:
        await kek.close()


async def key_of(db_url: str, change_id: str) -> str | None:
    rows = await fetch_all(
        db_url,
        "SELECT key_id FROM pcns_deliveries WHERE change_id = $1",
        uuid.UUID(change_id),
    )
    key: str | None = rows[0]["key_id"]
    return key


async def data_keys(db_url: str) -> dict[str, asyncpg.Record]:
    rows = await fetch_all(db_url, "SELECT * FROM pcns_data_keys")
    return {r["id"]: r for r in rows}


async def test_first_start_creates_one_wrapped_primary(tmp_path: Path, db_url: str) -> None:
    """On a new database the service creates a primary data key, stored only wrapped, audited."""
    files = make_files(tmp_path, db_url)
    async with service(files) as (client, _):
        _, body = await client.send("alice", "First-Key-1")
        assert await wait_terminal(client, body["id"]) == {"wiki": "delivered"}
    keys = await data_keys(db_url)
    assert [k["state"] for k in keys.values()] == ["primary"]
    (key,) = keys.values()
    assert len(key["wrapped"]) == 12 + 32 + 16  # nonce + wrapped key + tag: never the raw key
    audit = await fetch_all(db_url, "SELECT actor, action, key_id FROM pcns_key_audit")
    assert [(a["action"], a["key_id"]) for a in audit] == [("create", key["id"])]


async def test_rotate_rewrap_retire_online(tmp_path: Path, db_url: str) -> None:
    """rotate: new changes use the new key without a restart; rewrap: nothing queued stays
    under the old key; retire: refused while in use, then the wrapped key is destroyed."""
    files = make_files(tmp_path, db_url)
    files.targets = [{"name": "wiki", "type": "noop", "delay": 3.0}]
    async with service(files) as (client, store):
        kek = build_kek(files.settings())
        try:
            _, before = await client.send("alice", "Before-1")
            old = await key_of(db_url, before["id"])
            new = await admin.rotate(store, kek, actor="sec@test", propagation=0.5)
            assert new != old

            async def new_key_used() -> bool:
                _, after = await client.send("bob", "After-1")
                return await key_of(db_url, after["id"]) == new

            await eventually(new_key_used, timeout=5)
            with pytest.raises(admin.KeyAdminError, match="rewrap"):
                await admin.retire(store, actor="sec@test", key_id=str(old))
            report = await admin.rewrap(store, kek, actor="sec@test")
            assert report.remaining == 0
            assert report.rewrapped >= 1
            assert await key_of(db_url, before["id"]) == new
            await admin.retire(store, actor="sec@test", key_id=str(old))
            states = await wait_terminal(client, before["id"])
        finally:
            await kek.close()
    assert states == {"wiki": "delivered"}
    keys = await data_keys(db_url)
    assert keys[str(old)]["state"] == "retired"
    assert keys[str(old)]["wrapped"] is None
    assert keys[new]["state"] == "primary"
    actions = await fetch_all(db_url, "SELECT actor, action FROM pcns_key_audit ORDER BY id")
    assert [a["action"] for a in actions] == [
        "create",
        "create",
        "rotate",
        "rewrap-start",
        "rewrap",
        "retire",
    ]
    assert {a["actor"] for a in actions[1:]} == {"sec@test"}


async def test_automatic_rotation_by_encryption_count(tmp_path: Path, db_url: str) -> None:
    """After vault.max_encryptions encryptions the service makes a new primary by itself."""
    files = make_files(tmp_path, db_url, max_encryptions=5)
    async with service(files) as (client, _):
        first = None
        for i in range(6):
            _, body = await client.send(f"user{i}", "Pw-1")
            first = first or await key_of(db_url, body["id"])

        async def rotated() -> bool:
            keys = await data_keys(db_url)
            return any(k["state"] == "primary" and k["id"] != first for k in keys.values())

        await eventually(rotated, timeout=15)
    audit = await fetch_all(
        db_url, "SELECT actor, detail FROM pcns_key_audit WHERE action='rotate'"
    )
    assert audit[0]["actor"] == "pcns (automatic rotation)"
    assert "max_encryptions" in audit[0]["detail"]


async def test_rotate_kek_file(tmp_path: Path, db_url: str) -> None:
    """rotate-kek puts a new KEK in the file, rewraps every data key under it and drops the old
    one; the running service keeps delivering and a new process starts with the new file."""
    files = make_files(tmp_path, db_url)
    async with service(files) as (client, store):
        old_kek = (await data_keys(db_url)).popitem()[1]["kek_ref"]
        kek = build_kek(files.settings())
        try:
            assert await admin.rotate_kek(store, kek, actor="sec@test") == 1
        finally:
            await kek.close()
        assert old_kek not in files.keyring.read_text()
        _, body = await client.send("alice", "After-Kek-1")
        assert await wait_terminal(client, body["id"]) == {"wiki": "delivered"}
    (key,) = (await data_keys(db_url)).values()
    assert key["kek_ref"] != old_kek
    async with service(files) as (client, _):
        _, body = await client.send("alice", "Restarted-1")
        assert await wait_terminal(client, body["id"]) == {"wiki": "delivered"}


async def test_wrong_kek_is_a_clear_error_at_start(tmp_path: Path, db_url: str) -> None:
    """A service started with another KEK file than the one that wrapped the data keys stops
    at start with an error naming the provider, and delivers nothing."""
    files = make_files(tmp_path, db_url)
    async with service(files):
        pass
    os.unlink(files.keyring)
    create_keyring_file(files.keyring)
    with pytest.raises(KekError, match="file KEK"):
        async with service(files):
            pass


@pytest.mark.parametrize("tamper", ["flip_bit", "wrong_key_id", "unknown_key_id"])
async def test_tampered_ciphertext_fails_with_integrity(
    tmp_path: Path, db_url: str, tamper: str
) -> None:
    """A flipped bit or a ciphertext relabelled with another key id makes that delivery
    failed/integrity, raises the metric, and the worker goes on delivering."""
    files = make_files(tmp_path, db_url)
    files.targets = [{"name": "wiki", "type": "noop"}]
    async with (
        running_service(files.settings(), role="receiver") as rx,
        aiohttp.ClientSession() as session,
    ):
        client = Client(files, session)
        await rotate_now(files, rx.key_store, propagation=0.3)  # a second key to point at
        _, body = await client.send("alice", "Tamper-Me-1")
        change = uuid.UUID(body["id"])
        row = (
            await fetch_all(db_url, "SELECT * FROM pcns_deliveries WHERE change_id = $1", change)
        )[0]
        if tamper == "flip_bit":
            ct = bytearray(row["ciphertext"])
            ct[-1] ^= 0x01
            update, value = "ciphertext = $2", bytes(ct)
        else:
            keys = await data_keys(db_url)
            other = next(k for k in keys if k != row["key_id"])
            update = "key_id = $2"
            value = other if tamper == "wrong_key_id" else "dek-does-not-exist"
        await fetch_all(
            db_url, f"UPDATE pcns_deliveries SET {update} WHERE id = $1", row["id"], value
        )
        # Only now does a worker start: it meets the tampered row first.
        worker = ServiceFiles(files.root, db_url, targets=files.targets, vault=files.vault)
        async with running_service(worker.settings(), role="worker"):
            assert await wait_terminal(client, body["id"]) == {"wiki": "failed"}
            doc = await client.status(body["id"])
            _, ok = await client.send("bob", "Untouched-1")
            assert await wait_terminal(client, ok["id"]) == {"wiki": "delivered"}
            async with session.get(worker.url + "/metrics") as r:
                metrics = await r.text()
    assert doc["deliveries"][0]["last_error"].startswith("integrity")
    assert 'pcns_integrity_failures_total{target="wiki"} 1.0' in metrics
    rows = await fetch_all(
        db_url, "SELECT ciphertext FROM pcns_deliveries WHERE change_id = $1", change
    )
    assert rows[0]["ciphertext"] is None


async def test_database_dump_alone_recovers_nothing(tmp_path: Path, db_url: str) -> None:
    """With queued changes in the database, a pg_dump plus every table read finds no password,
    and no ciphertext opens with any key-sized piece of what the dump holds."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vault import AssociatedData

    sentinel = "Dump-SENTINEL-91c2-Пароль"
    files = make_files(tmp_path, db_url)
    files.targets = [{"name": "wiki", "type": "noop"}]
    async with (
        running_service(files.settings(), role="receiver") as rx,
        aiohttp.ClientSession() as session,
    ):
        client = Client(files, session)
        for i in range(3):
            await client.send(f"user{i}", sentinel)
        await rotate_now(files, rx.key_store, propagation=0.2)
        for i in range(3, 6):
            await client.send(f"user{i}", sentinel)
    proc = await asyncio.create_subprocess_exec(
        str(PG_DUMP), "--dbname", db_url, stdout=asyncio.subprocess.PIPE
    )
    dump, _ = await proc.communicate()
    assert proc.returncode == 0
    tables = await fetch_all(db_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    every_row = b""
    for t in tables:
        rows = await fetch_all(
            db_url, f'SELECT row_to_json(x)::text AS j FROM "{t["tablename"]}" x'
        )
        every_row += b"".join(r["j"].encode() for r in rows)
    for hay in (dump, every_row):
        assert sentinel.encode() not in hay
        assert sentinel.encode("utf-16-le") not in hay
    sealed = await fetch_all(db_url, "SELECT * FROM pcns_deliveries WHERE ciphertext IS NOT NULL")
    assert len(sealed) == 6
    wrapped = [
        bytes(r["wrapped"]) for r in await fetch_all(db_url, "SELECT wrapped FROM pcns_data_keys")
    ]
    candidates = {w[i : i + 32] for w in wrapped for i in range(len(w) - 31)}
    opened = 0
    for row in sealed:
        ad = AssociatedData(str(row["id"]), str(row["change_id"]), row["target"], row["account"])
        for key in candidates:
            try:
                AESGCM(key).decrypt(row["nonce"], row["ciphertext"], ad.encode(row["key_id"]))
                opened += 1
            except InvalidTag:
                pass
    assert opened == 0
    assert len(candidates) > 10
