"""Statements on the hook-key table (audit and NOTIFY are shared with the data keys)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from vault import WrappedKey

HookKeyState = Literal["current", "active", "retired"]


@dataclass(frozen=True, slots=True)
class HookKeyRow:
    id: str
    state: HookKeyState
    wrapped: WrappedKey | None
    public_key: bytes
    created_at: datetime


async def hook_keys(conn: asyncpg.Connection) -> list[HookKeyRow]:
    rows = await conn.fetch(
        "SELECT id, state, kek_ref, wrapped, public_key, created_at FROM pcns_hook_keys"
        " ORDER BY created_at, id"
    )
    return [
        HookKeyRow(
            id=r["id"],
            state=r["state"],
            wrapped=WrappedKey(r["kek_ref"], r["wrapped"]) if r["wrapped"] is not None else None,
            public_key=bytes(r["public_key"]),
            created_at=r["created_at"],
        )
        for r in rows
    ]


async def insert_current(
    conn: asyncpg.Connection, key_id: str, wrapped: WrappedKey, public_key: bytes
) -> str | None:
    """Add ``key_id`` as the current key; the previous current one stays active. Returns it."""
    previous: str | None = await conn.fetchval(
        "UPDATE pcns_hook_keys SET state = 'active', updated_at = now()"
        " WHERE state = 'current' RETURNING id"
    )
    await conn.execute(
        "INSERT INTO pcns_hook_keys (id, state, kek_ref, wrapped, public_key)"
        " VALUES ($1, 'current', $2, $3, $4)",
        key_id,
        wrapped.kek_ref,
        wrapped.blob,
        public_key,
    )
    return previous


async def destroy(conn: asyncpg.Connection, key_id: str) -> None:
    """Retire a hook key: its wrapped private half is deleted; the row stays as a record."""
    await conn.execute(
        "UPDATE pcns_hook_keys SET state = 'retired', wrapped = NULL, retired_at = now(),"
        " updated_at = now() WHERE id = $1",
        key_id,
    )


async def set_wrapped(conn: asyncpg.Connection, key_id: str, wrapped: WrappedKey) -> None:
    await conn.execute(
        "UPDATE pcns_hook_keys SET kek_ref = $2, wrapped = $3, updated_at = now()"
        " WHERE id = $1 AND state <> 'retired'",
        key_id,
        wrapped.kek_ref,
        wrapped.blob,
    )
