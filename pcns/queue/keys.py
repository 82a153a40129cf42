"""Statements on the data-key table, its audit log, and the rewrap of queued ciphertexts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from vault import WrappedKey

KEYS_CHANNEL = "pcns_keys"
# Serialises key administration (first key, rotation, retire) across processes.
KEY_ADMIN_LOCK = 0x70636B79

DataKeyState = Literal["primary", "active", "decrypt-only", "retired"]


@dataclass(frozen=True, slots=True)
class DataKeyRow:
    id: str
    state: DataKeyState
    wrapped: WrappedKey | None
    encryptions: int
    created_at: datetime
    age_seconds: float


_SELECT_KEYS = """
SELECT id, state, kek_ref, wrapped, encryptions, created_at,
       extract(epoch FROM now() - created_at)::float8 AS age
FROM pcns_data_keys ORDER BY created_at, id
"""


async def data_keys(conn: asyncpg.Connection) -> list[DataKeyRow]:
    rows = await conn.fetch(_SELECT_KEYS)
    return [
        DataKeyRow(
            id=r["id"],
            state=r["state"],
            wrapped=WrappedKey(r["kek_ref"], r["wrapped"]) if r["wrapped"] is not None else None,
            encryptions=r["encryptions"],
            created_at=r["created_at"],
            age_seconds=r["age"],
        )
        for r in rows
    ]


async def insert_data_key(
    conn: asyncpg.Connection, key_id: str, state: DataKeyState, wrapped: WrappedKey
) -> None:
    await conn.execute(
        "INSERT INTO pcns_data_keys (id, state, kek_ref, wrapped) VALUES ($1, $2, $3, $4)",
        key_id,
        state,
        wrapped.kek_ref,
        wrapped.blob,
    )


async def promote(conn: asyncpg.Connection, key_id: str) -> str | None:
    """Make ``key_id`` primary; the old primary becomes decrypt-only. Returns the old id."""
    old: str | None = await conn.fetchval(
        "UPDATE pcns_data_keys SET state = 'decrypt-only', updated_at = now()"
        " WHERE state = 'primary' RETURNING id"
    )
    done = await conn.execute(
        "UPDATE pcns_data_keys SET state = 'primary', updated_at = now()"
        " WHERE id = $1 AND state IN ('active', 'decrypt-only')",
        key_id,
    )
    if done != "UPDATE 1":
        raise LookupError(f"no active or decrypt-only data key {key_id!r}")
    return old


async def set_wrapped(conn: asyncpg.Connection, key_id: str, wrapped: WrappedKey) -> None:
    await conn.execute(
        "UPDATE pcns_data_keys SET kek_ref = $2, wrapped = $3, updated_at = now()"
        " WHERE id = $1 AND state <> 'retired'",
        key_id,
        wrapped.kek_ref,
        wrapped.blob,
    )


async def destroy(conn: asyncpg.Connection, key_id: str) -> None:
    """Retire a key: its wrapped form is deleted; the row stays as a record."""
    await conn.execute(
        "UPDATE pcns_data_keys SET state = 'retired', wrapped = NULL, retired_at = now(),"
        " updated_at = now() WHERE id = $1",
        key_id,
    )


async def add_encryptions(conn: asyncpg.Connection, counts: Mapping[str, int]) -> None:
    if counts:
        await conn.execute(
            "UPDATE pcns_data_keys k SET encryptions = k.encryptions + c.n"
            " FROM unnest($1::text[], $2::bigint[]) AS c(id, n) WHERE k.id = c.id",
            list(counts),
            list(counts.values()),
        )


async def ciphertexts_per_key(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT key_id, count(*) AS n FROM pcns_deliveries"
        " WHERE ciphertext IS NOT NULL GROUP BY key_id"
    )
    return {r["key_id"]: r["n"] for r in rows}


async def count_sealed_by(conn: asyncpg.Connection, key_ids: Sequence[str]) -> int:
    n: int = await conn.fetchval(
        "SELECT count(*) FROM pcns_deliveries WHERE ciphertext IS NOT NULL AND key_id = ANY($1)",
        list(key_ids),
    )
    return n


async def audit(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    key_id: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO pcns_key_audit (actor, action, key_id, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        key_id,
        json.dumps(detail or {}),
    )


async def notify_keys_changed(conn: asyncpg.Connection) -> None:
    await conn.execute(f"NOTIFY {KEYS_CHANNEL}")


@dataclass(frozen=True, slots=True)
class SealedRow:
    id: UUID
    change_id: UUID
    target: str
    account: str
    key_id: str
    nonce: bytes
    ciphertext: bytes


_LOCK_NOT_UNDER = """
SELECT id, change_id, target, account, key_id, nonce, ciphertext FROM pcns_deliveries
WHERE ciphertext IS NOT NULL AND key_id = ANY($1::text[])
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

_WRITE_RESEALED = """
UPDATE pcns_deliveries d SET key_id = x.key_id, nonce = x.nonce, ciphertext = x.ciphertext
FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[]) AS x(id, key_id, nonce, ciphertext)
WHERE d.id = x.id AND d.ciphertext IS NOT NULL
"""


async def lock_sealed_by(
    conn: asyncpg.Connection, key_ids: Sequence[str], limit: int
) -> list[SealedRow]:
    """Lock up to ``limit`` queued ciphertexts under ``key_ids`` (call inside a transaction)."""
    rows = await conn.fetch(_LOCK_NOT_UNDER, list(key_ids), limit)
    return [SealedRow(**dict(r)) for r in rows]


async def write_resealed(
    conn: asyncpg.Connection, rows: Sequence[tuple[UUID, str, bytes, bytes]]
) -> None:
    if rows:
        ids, kids, nonces, cts = zip(*rows, strict=True)
        await conn.execute(_WRITE_RESEALED, list(ids), list(kids), list(nonces), list(cts))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    key_id: str | None
    detail: dict[str, Any]


async def audit_log(conn: asyncpg.Connection, limit: int = 50) -> list[AuditEntry]:
    rows = await conn.fetch(
        "SELECT at, actor, action, key_id, detail FROM pcns_key_audit ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [
        AuditEntry(r["at"], r["actor"], r["action"], r["key_id"], json.loads(r["detail"]))
        for r in rows
    ]


async def lock_out_ciphertext_writers(conn: asyncpg.Connection) -> None:
    """Hold off intake and rewrap until the transaction ends (retire counts ciphertexts)."""
    await conn.execute("LOCK TABLE pcns_deliveries IN SHARE ROW EXCLUSIVE MODE")


async def take_admin_lock(conn: asyncpg.Connection) -> None:
    """Serialise key administration across processes (call inside a transaction)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", KEY_ADMIN_LOCK)
