"""Key custody's tables as the rest of the service sees them: one object that owns the pool.

``async with store.session() as s`` borrows a connection, ``async with store.transaction() as s``
runs a transaction holding the key-administration lock; either way ``s`` is a
:class:`KeyStatements`, whose every call translates driver errors into
:class:`~pcns.errors.DatabaseError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg

from pcns.database import Database, translated
from pcns.errors import DatabaseError
from pcns.queue import hook_keys as hook_sql
from pcns.queue import keys as sql
from pcns.queue.hook_keys import HookKeyRow
from pcns.queue.keys import AuditEntry, DataKeyRow, DataKeyState, SealedRow
from vault import WrappedKey

ACQUIRE_TIMEOUT = 10.0


class KeyStatements:
    """The statements on data keys, hook keys and their audit log, on one connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def __repr__(self) -> str:
        return "KeyStatements()"

    async def data_keys(self) -> list[DataKeyRow]:
        with translated():
            return await sql.data_keys(self._conn)

    async def insert_data_key(self, key_id: str, state: DataKeyState, wrapped: WrappedKey) -> None:
        with translated():
            await sql.insert_data_key(self._conn, key_id, state, wrapped)

    async def promote(self, key_id: str) -> str | None:
        """Make ``key_id`` primary; returns the previous primary."""
        with translated():
            return await sql.promote(self._conn, key_id)

    async def set_wrapped(self, key_id: str, wrapped: WrappedKey) -> None:
        with translated():
            await sql.set_wrapped(self._conn, key_id, wrapped)

    async def destroy(self, key_id: str) -> None:
        with translated():
            await sql.destroy(self._conn, key_id)

    async def add_encryptions(self, counts: Mapping[str, int]) -> None:
        with translated():
            await sql.add_encryptions(self._conn, counts)

    async def ciphertexts_per_key(self) -> dict[str, int]:
        with translated():
            return await sql.ciphertexts_per_key(self._conn)

    async def count_sealed_by(self, key_ids: Sequence[str]) -> int:
        with translated():
            return await sql.count_sealed_by(self._conn, key_ids)

    async def lock_sealed_by(self, key_ids: Sequence[str], limit: int) -> list[SealedRow]:
        with translated():
            return await sql.lock_sealed_by(self._conn, key_ids, limit)

    async def write_resealed(self, rows: Sequence[tuple[UUID, str, bytes, bytes]]) -> None:
        with translated():
            await sql.write_resealed(self._conn, rows)

    async def lock_out_ciphertext_writers(self) -> None:
        with translated():
            await sql.lock_out_ciphertext_writers(self._conn)

    async def audit(
        self, actor: str, action: str, key_id: str | None, detail: dict[str, Any] | None = None
    ) -> None:
        with translated():
            await sql.audit(self._conn, actor, action, key_id, detail)

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        with translated():
            return await sql.audit_log(self._conn, limit)

    async def notify_keys_changed(self) -> None:
        """Tell every running process to reload its keys (delivered at commit)."""
        with translated():
            await sql.notify_keys_changed(self._conn)

    async def hook_keys(self) -> list[HookKeyRow]:
        with translated():
            return await hook_sql.hook_keys(self._conn)

    async def insert_current_hook_key(
        self, key_id: str, wrapped: WrappedKey, public_key: bytes
    ) -> str | None:
        """Add ``key_id`` as the current hook key; returns the previous current one."""
        with translated():
            return await hook_sql.insert_current(self._conn, key_id, wrapped, public_key)

    async def destroy_hook_key(self, key_id: str) -> None:
        with translated():
            await hook_sql.destroy(self._conn, key_id)

    async def set_hook_wrapped(self, key_id: str, wrapped: WrappedKey) -> None:
        with translated():
            await hook_sql.set_wrapped(self._conn, key_id, wrapped)


class KeyStore:
    """Sessions and administration transactions on the key tables."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pool = db.pool

    def __repr__(self) -> str:
        return "KeyStore()"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[KeyStatements]:
        """One pooled connection, no transaction: each statement commits on its own."""
        with translated():
            conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT)
        try:
            yield KeyStatements(conn)
        finally:
            with translated():
                await self._pool.release(conn)

    @asynccontextmanager
    async def transaction(self, *, admin_lock: bool = True) -> AsyncIterator[KeyStatements]:
        """One transaction, holding the key-administration lock unless ``admin_lock`` is False.

        Commits when the block ends normally; rolls back when it raises.
        """
        with translated():
            conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT)
        try:
            tx = conn.transaction()
            with translated():
                await tx.start()
                if admin_lock:
                    await sql.take_admin_lock(conn)
            try:
                yield KeyStatements(conn)
            except BaseException:
                with contextlib.suppress(DatabaseError), translated():
                    await tx.rollback()
                raise
            with translated():
                await tx.commit()
        finally:
            with contextlib.suppress(DatabaseError), translated():
                await self._pool.release(conn)

    async def listen_for_changes(self, on_change: Callable[[], None], stop: asyncio.Event) -> None:
        """Call ``on_change`` whenever a key operation is announced, until ``stop``."""
        await self._db.listen(sql.KEYS_CHANNEL, on_change, stop)
