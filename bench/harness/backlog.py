"""Queued work for a timed run: changes through the service's own intake code, or many rows
with real sealed ciphertexts written with ``COPY``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import asyncpg

from bench.harness.loadgen import PASSWORD

if TYPE_CHECKING:
    from bench.harness.databases import Databases
    from bench.harness.service import ServiceFiles
    from pcns.config import Settings
    from vault import Keyring


async def service_keyring(url: str, kek_file: Path) -> Keyring:
    """The data keys the service will use (the first one created if needed), unwrapped."""
    from pcns.database import create_pool
    from pcns.keys.admin import ensure_primary, load_keyring
    from pcns.queue.key_store import KeyStore
    from pcns.queue.migrate import migrate_database
    from vault import FileKek

    kek = FileKek(kek_file)
    async with create_pool(url, size=2) as db:
        await migrate_database(db)
        store = KeyStore(db)
        await ensure_primary(store, kek, actor="bench")
        return await load_keyring(store, kek)


async def prefill_through_intake(url: str, settings: Settings, n: int, prefix: str) -> None:
    """Queue ``n`` changes with the service's own intake (route, seal) and group-commit insert."""
    from pydantic import SecretStr

    from pcns.queue.migrate import migrate
    from pcns.queue.store import insert_changes
    from pcns.receiver.intake import build_change
    from pcns.receiver.models import PasswordChangeIn
    from pcns.routing import Router

    router = Router(settings.targets)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        keys = await service_keyring(url, settings.vault.keyring)
        for lo in range(0, n, 256):
            changes = [
                build_change(
                    PasswordChangeIn(user=f"{prefix}{i}", password=SecretStr(f"{PASSWORD}{i}")),
                    f"{PASSWORD}{i}",
                    source="dc01",
                    webhook_id=f"msg_{prefix}{i}",
                    router=router,
                    keys=keys,
                )
                for i in range(lo, min(n, lo + 256))
            ]
            await insert_changes(conn, changes)
    finally:
        await conn.close()


async def queue_backlog(
    url: str, files: ServiceFiles, n: int, *, target: str, due: Literal["now", "later"]
) -> None:
    """COPY ``n`` changes for accounts ``mem-0 ..``, with one real sealed delivery each to
    ``target``; ``due`` 'now' or 'later' (in a day, as a delivery waiting for a retry)."""
    from pcns.ids import uuid7
    from vault import AssociatedData, seal

    keys = await service_keyring(url, files.keyring)
    now = datetime.now(UTC)
    due_at = now - timedelta(seconds=1) if due == "now" else now + timedelta(days=1)
    changes, deliveries = [], []
    for i in range(n):
        change_id, delivery_id, account = uuid7(), uuid7(), f"mem-{i}"
        response = json.dumps(
            {"id": str(change_id), "deliveries": [{"target": target, "state": "pending"}]}
        )
        changes.append((change_id, "dc01", f"msg_mem-{i}", account, response))
        sealed = seal(
            keys,
            f"{PASSWORD}{i}",
            AssociatedData(str(delivery_id), str(change_id), target, account),
        )
        deliveries.append(
            (
                delivery_id,
                change_id,
                target,
                account,
                now,
                due_at,
                sealed.key_id,
                sealed.nonce,
                sealed.ciphertext,
            )
        )
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "pcns_changes",
            records=changes,
            columns=["id", "source", "webhook_id", "user_name", "response"],
        )
        await conn.copy_records_to_table(
            "pcns_deliveries",
            records=deliveries,
            columns=[
                "id",
                "change_id",
                "target",
                "account",
                "order_at",
                "due_at",
                "key_id",
                "nonce",
                "ciphertext",
            ],
        )
    finally:
        await conn.close()


async def backlog_template(
    dbs: Databases,
    files: ServiceFiles,
    n: int,
    *,
    label: str,
    target: str,
    due: Literal["now", "later"],
) -> str:
    """A database holding ``n`` queued changes (:func:`queue_backlog`), vacuumed and analyzed
    once; every timed run gets a byte-identical copy of it (``CREATE DATABASE ... TEMPLATE``)."""
    url = await dbs.create(label)
    await queue_backlog(url, files, n, target=target, due=due)
    await dbs.quiesce(url, analyze=True)
    return url
