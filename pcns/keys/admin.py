"""The security team's key operations: list, rotate, rewrap, retire, rotate-kek.

Each one is audited in ``pcns_key_audit`` (who, when, what; never key material) and announced
with NOTIFY so running receivers and workers pick it up without a restart.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import structlog

from pcns.config import VaultSettings
from pcns.keys import hook_admin
from pcns.keys.manager import new_key_id
from pcns.queue import keys as sql
from vault import (
    KEY_BYTES,
    AssociatedData,
    FileKek,
    IntegrityError,
    KekProvider,
    Keyring,
    Sealed,
    add_kek,
    prune_keks,
    reseal,
)

log = structlog.get_logger(__name__)


class KeyAdminError(Exception):
    """A key operation was refused; the message says why."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    state: str
    created_at: str
    encryptions: int
    queued_ciphertexts: int


async def list_keys(pool: asyncpg.Pool) -> list[KeyInfo]:
    async with pool.acquire() as conn:
        rows = await sql.data_keys(conn)
        counts = await sql.ciphertexts_per_key(conn)
    return [
        KeyInfo(
            r.id,
            r.state,
            r.created_at.isoformat(timespec="seconds"),
            r.encryptions,
            counts.get(r.id, 0),
        )
        for r in rows
    ]


def due_for_rotation(rows: list[sql.DataKeyRow], settings: VaultSettings) -> str | None:
    """Why the primary must be replaced now (age or encryption count), or None."""
    primary = next((r for r in rows if r.state == "primary"), None)
    if primary is None:
        return None
    if primary.age_seconds >= settings.rotate_after:
        return f"primary older than vault.rotate_after ({settings.rotate_after:.0f}s)"
    if primary.encryptions >= settings.max_encryptions:
        return f"primary reached vault.max_encryptions ({settings.max_encryptions})"
    return None


async def rotate(
    pool: asyncpg.Pool,
    kek: KekProvider,
    *,
    actor: str,
    propagation: float,
    settings: VaultSettings | None = None,
    reason: str = "manual",
) -> str:
    """Create a data key, let every process load it, then make it primary.

    The new key is first ``active`` (loaded everywhere, used by nobody) for ``propagation``
    seconds, so no process can meet a ciphertext under a key it has not loaded yet.
    """
    key_id = new_key_id()
    wrapped = await kek.wrap(key_id, secrets.token_bytes(KEY_BYTES))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.KEY_ADMIN_LOCK)
        # Automatic rotation: another process may have rotated while we waited for the lock.
        if (
            settings is not None
            and reason != "manual"
            and due_for_rotation(await sql.data_keys(conn), settings) is None
        ):
            return ""
        await sql.insert_data_key(conn, key_id, "active", wrapped)
        await sql.audit(conn, actor, "create", key_id, {"state": "active", "kek": kek.name})
        await sql.notify_keys_changed(conn)
    await asyncio.sleep(propagation)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.KEY_ADMIN_LOCK)
        previous = await sql.promote(conn, key_id)
        await sql.audit(conn, actor, "rotate", key_id, {"previous": previous, "reason": reason})
        await sql.notify_keys_changed(conn)
    log.info("data_key_rotated", key_id=key_id, previous=previous, actor=actor, reason=reason)
    return key_id


async def ensure_primary(conn: asyncpg.Connection, kek: KekProvider, *, actor: str) -> bool:
    """Create the first data key when the database has no primary; True if one was created."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.KEY_ADMIN_LOCK)
        if any(r.state == "primary" for r in await sql.data_keys(conn)):
            return False
        key_id = new_key_id()
        wrapped = await kek.wrap(key_id, secrets.token_bytes(KEY_BYTES))
        await sql.insert_data_key(conn, key_id, "primary", wrapped)
        await sql.audit(conn, actor, "create", key_id, {"state": "primary", "kek": kek.name})
        await sql.notify_keys_changed(conn)
    log.info("data_key_created", key_id=key_id, kek=kek.name)
    return True


async def load_keyring(pool: asyncpg.Pool, kek: KekProvider) -> Keyring:
    """Every live data key, unwrapped, for a standalone command."""
    async with pool.acquire() as conn:
        rows = await sql.data_keys(conn)
    keys = {r.id: await kek.unwrap(r.id, r.wrapped) for r in rows if r.wrapped is not None}
    keyring = Keyring()
    keyring.install(keys, next((r.id for r in rows if r.state == "primary"), None))
    return keyring


@dataclass(frozen=True, slots=True)
class RewrapReport:
    rewrapped: int
    integrity_failures: int
    remaining: int


async def rewrap(
    pool: asyncpg.Pool,
    kek: KekProvider,
    *,
    actor: str,
    batch: int = 1000,
    parallel: int = 2,
    pause: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> RewrapReport:
    """Re-encrypt every queued ciphertext not under the primary, in batches, online.

    ``parallel`` lanes work at once (one re-seals while another's batch is in PostgreSQL);
    ``pause`` seconds after each batch leave room for the service's own work. Resumable: each
    batch commits on its own, and a new run starts from what is left. Rows being claimed at that
    moment are skipped (SKIP LOCKED) and taken by a later pass.
    """
    keyring = await load_keyring(pool, kek)
    primary = keyring.primary_id
    if primary is None:
        raise KeyAdminError("there is no primary data key")
    old = sorted(keyring.key_ids - {primary})
    async with pool.acquire() as conn:
        total = await sql.count_sealed_by(conn, old)
        await sql.audit(conn, actor, "rewrap-start", primary, {"queued": total, "from": old})
    tally = _Tally()

    async def lane() -> None:
        idle_passes = 0
        while old and idle_passes < 50:
            rows = await _rewrap_batch(pool, keyring, old, batch, tally)
            if progress is not None:
                progress(tally.done, total)
            if rows:
                idle_passes = 0
                if pause:
                    await asyncio.sleep(pause)
                continue
            async with pool.acquire() as conn:
                remaining = await sql.count_sealed_by(conn, old) - len(tally.broken)
            if remaining <= 0:
                return
            idle_passes += 1  # rows locked by a claim or another lane right now
            await asyncio.sleep(0.1)

    await asyncio.gather(*(lane() for _ in range(max(1, parallel))))
    async with pool.acquire() as conn:
        await sql.add_encryptions(conn, keyring.take_counts())
        remaining = await sql.count_sealed_by(conn, old)
        await sql.audit(
            conn,
            actor,
            "rewrap",
            primary,
            {"rewrapped": tally.done, "integrity_failures": tally.failures, "remaining": remaining},
        )
    return RewrapReport(tally.done, tally.failures, remaining)


@dataclass
class _Tally:
    done: int = 0
    failures: int = 0
    broken: set[object] = field(default_factory=set)


async def _rewrap_batch(
    pool: asyncpg.Pool, keyring: Keyring, old: list[str], batch: int, tally: _Tally
) -> int:
    """Lock, re-seal and write back one batch; returns how many rows it locked."""
    async with pool.acquire() as conn, conn.transaction():
        locked = await sql.lock_sealed_by(conn, old, batch + len(tally.broken))
        rows = [r for r in locked if r.id not in tally.broken][:batch]
        resealed = []
        for r in rows:
            ad = AssociatedData(str(r.id), str(r.change_id), r.target, r.account)
            try:
                new = reseal(keyring, Sealed(r.key_id, r.nonce, r.ciphertext), ad)
            except IntegrityError:
                tally.broken.add(r.id)  # left as is: its worker fails it with reason integrity
                tally.failures += 1
                continue
            resealed.append((r.id, new.key_id, new.nonce, new.ciphertext))
        await sql.write_resealed(conn, resealed)
    tally.done += len(resealed)
    return len(rows)


async def retire(pool: asyncpg.Pool, *, actor: str, key_id: str) -> None:
    """Destroy a data key; refused while it is primary or any queued ciphertext uses it."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.KEY_ADMIN_LOCK)
        rows = {r.id: r for r in await sql.data_keys(conn)}
        row = rows.get(key_id)
        if row is None:
            raise KeyAdminError(f"no data key {key_id!r}")
        if row.state == "retired":
            raise KeyAdminError(f"data key {key_id!r} is already retired")
        if row.state == "primary":
            raise KeyAdminError(f"data key {key_id!r} is primary; rotate first")
        # Lock out concurrent writers of ciphertexts under this key while we count.
        await conn.execute("LOCK TABLE pcns_deliveries IN SHARE ROW EXCLUSIVE MODE")
        in_use = await sql.count_sealed_by(conn, [key_id])
        if in_use:
            raise KeyAdminError(
                f"data key {key_id!r} still protects {in_use} queued ciphertexts; "
                "run `pcns keys rewrap` first"
            )
        await sql.destroy(conn, key_id)
        await sql.audit(conn, actor, "retire", key_id, {"previous_state": row.state})
        await sql.notify_keys_changed(conn)
    log.info("data_key_retired", key_id=key_id, actor=actor)


async def rotate_kek(pool: asyncpg.Pool, kek: KekProvider, *, actor: str) -> int:
    """Rewrap every data key and hook key under the current KEK: a new KEK in the keyring file
    (file provider), or the newest key version on the server (transit). Returns the data keys
    rewrapped."""
    new_kek: str | None = None
    if isinstance(kek, FileKek):
        new_kek = await asyncio.to_thread(add_kek, kek.path)
        kek = FileKek(kek.path)
    count = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.KEY_ADMIN_LOCK)
        for row in await sql.data_keys(conn):
            if row.wrapped is None or await kek.is_current(row.wrapped):
                continue
            await sql.set_wrapped(conn, row.id, await kek.rewrap(row.id, row.wrapped))
            count += 1
        # Hook keys are wrapped by the same KEK: an old KEK pruned below must protect nothing.
        hook_keys = await hook_admin.rewrap_all(conn, kek)
        await sql.audit(
            conn,
            actor,
            "rotate-kek",
            None,
            {"kek": kek.name, "rewrapped": count, "hook_keys": hook_keys, "new_kek": new_kek},
        )
        await sql.notify_keys_changed(conn)
    if isinstance(kek, FileKek):
        await asyncio.to_thread(prune_keks, kek.path)
    log.info("kek_rotated", kek=kek.name, rewrapped=count, actor=actor)
    return count
