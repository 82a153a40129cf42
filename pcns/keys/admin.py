"""The security team's key operations: list, rotate, rewrap, retire, rotate-kek.

Each one is audited in ``pcns_key_audit`` (who, when, what; never key material) and announced
with NOTIFY so running receivers and workers pick it up without a restart.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from pcns.config import VaultSettings
from pcns.errors import PcnsError
from pcns.keys import hook_admin
from pcns.keys.policy import due_for_rotation, new_data_key_id
from pcns.queue.key_store import KeyStore
from pcns.queue.records import binding
from vault import (
    KEY_BYTES,
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


class KeyAdminError(PcnsError):
    """A key operation was refused; the message says why."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    state: str
    created_at: str
    encryptions: int
    queued_ciphertexts: int


async def list_keys(store: KeyStore) -> list[KeyInfo]:
    async with store.session() as s:
        rows = await s.data_keys()
        counts = await s.ciphertexts_per_key()
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


async def rotate(
    store: KeyStore,
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
    key_id = new_data_key_id()
    wrapped = await kek.wrap(key_id, secrets.token_bytes(KEY_BYTES))
    async with store.transaction() as s:
        # Automatic rotation: another process may have rotated while we waited for the lock.
        if (
            settings is not None
            and reason != "manual"
            and due_for_rotation(await s.data_keys(), settings) is None
        ):
            return ""
        await s.insert_data_key(key_id, "active", wrapped)
        await s.audit(actor, "create", key_id, {"state": "active", "kek": kek.name})
        await s.notify_keys_changed()
    await asyncio.sleep(propagation)
    async with store.transaction() as s:
        previous = await s.promote(key_id)
        await s.audit(actor, "rotate", key_id, {"previous": previous, "reason": reason})
        await s.notify_keys_changed()
    log.info("data_key_rotated", key_id=key_id, previous=previous, actor=actor, reason=reason)
    return key_id


async def ensure_primary(store: KeyStore, kek: KekProvider, *, actor: str) -> bool:
    """Create the first data key when the database has no primary; True if one was created."""
    async with store.transaction() as s:
        if any(r.state == "primary" for r in await s.data_keys()):
            return False
        key_id = new_data_key_id()
        wrapped = await kek.wrap(key_id, secrets.token_bytes(KEY_BYTES))
        await s.insert_data_key(key_id, "primary", wrapped)
        await s.audit(actor, "create", key_id, {"state": "primary", "kek": kek.name})
        await s.notify_keys_changed()
    log.info("data_key_created", key_id=key_id, kek=kek.name)
    return True


async def load_keyring(store: KeyStore, kek: KekProvider) -> Keyring:
    """Every live data key, unwrapped, for a standalone command."""
    async with store.session() as s:
        rows = await s.data_keys()
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
    store: KeyStore,
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
    keyring = await load_keyring(store, kek)
    primary = keyring.primary_id
    if primary is None:
        raise KeyAdminError("there is no primary data key")
    old = sorted(keyring.key_ids - {primary})
    async with store.session() as s:
        total = await s.count_sealed_by(old)
        await s.audit(actor, "rewrap-start", primary, {"queued": total, "from": old})
    tally = _Tally()

    async def lane() -> None:
        idle_passes = 0
        while old and idle_passes < 50:
            rows = await _rewrap_batch(store, keyring, old, batch, tally)
            if progress is not None:
                progress(tally.done, total)
            if rows:
                idle_passes = 0
                if pause:
                    await asyncio.sleep(pause)
                continue
            async with store.session() as s:
                remaining = await s.count_sealed_by(old) - len(tally.broken)
            if remaining <= 0:
                return
            idle_passes += 1  # rows locked by a claim or another lane right now
            await asyncio.sleep(0.1)

    await asyncio.gather(*(lane() for _ in range(max(1, parallel))))
    async with store.session() as s:
        await s.add_encryptions(keyring.take_counts())
        remaining = await s.count_sealed_by(old)
        await s.audit(
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
    store: KeyStore, keyring: Keyring, old: list[str], batch: int, tally: _Tally
) -> int:
    """Lock, re-seal and write back one batch; returns how many rows it locked."""
    async with store.transaction(admin_lock=False) as s:
        locked = await s.lock_sealed_by(old, batch + len(tally.broken))
        rows = [r for r in locked if r.id not in tally.broken][:batch]
        resealed = []
        for r in rows:
            ad = binding(r.id, r.change_id, r.target, r.account)
            try:
                new = reseal(keyring, Sealed(r.key_id, r.nonce, r.ciphertext), ad)
            except IntegrityError:
                tally.broken.add(r.id)  # left as is: its worker fails it with reason integrity
                tally.failures += 1
                continue
            resealed.append((r.id, new.key_id, new.nonce, new.ciphertext))
        await s.write_resealed(resealed)
    tally.done += len(resealed)
    return len(rows)


async def retire(store: KeyStore, *, actor: str, key_id: str) -> None:
    """Destroy a data key; refused while it is primary or any queued ciphertext uses it."""
    async with store.transaction() as s:
        rows = {r.id: r for r in await s.data_keys()}
        row = rows.get(key_id)
        if row is None:
            raise KeyAdminError(f"no data key {key_id!r}")
        if row.state == "retired":
            raise KeyAdminError(f"data key {key_id!r} is already retired")
        if row.state == "primary":
            raise KeyAdminError(f"data key {key_id!r} is primary; rotate first")
        # Lock out concurrent writers of ciphertexts under this key while we count.
        await s.lock_out_ciphertext_writers()
        in_use = await s.count_sealed_by([key_id])
        if in_use:
            raise KeyAdminError(
                f"data key {key_id!r} still protects {in_use} queued ciphertexts; "
                "run `pcns keys rewrap` first"
            )
        await s.destroy(key_id)
        await s.audit(actor, "retire", key_id, {"previous_state": row.state})
        await s.notify_keys_changed()
    log.info("data_key_retired", key_id=key_id, actor=actor)


async def rotate_kek(store: KeyStore, kek: KekProvider, *, actor: str) -> int:
    """Rewrap every data key and hook key under the current KEK: a new KEK in the keyring file
    (file provider), or the newest key version on the server (transit). Returns the data keys
    rewrapped."""
    new_kek: str | None = None
    if isinstance(kek, FileKek):
        new_kek = await asyncio.to_thread(add_kek, kek.path)
        kek = FileKek(kek.path)
    count = 0
    async with store.transaction() as s:
        for row in await s.data_keys():
            if row.wrapped is None or await kek.is_current(row.wrapped):
                continue
            await s.set_wrapped(row.id, await kek.rewrap(row.id, row.wrapped))
            count += 1
        # Hook keys are wrapped by the same KEK: an old KEK pruned below must protect nothing.
        hook_keys = await hook_admin.rewrap_all(s, kek)
        await s.audit(
            actor,
            "rotate-kek",
            None,
            {"kek": kek.name, "rewrapped": count, "hook_keys": hook_keys, "new_kek": new_kek},
        )
        await s.notify_keys_changed()
    if isinstance(kek, FileKek):
        await asyncio.to_thread(prune_keks, kek.path)
    log.info("kek_rotated", kek=kek.name, rewrapped=count, actor=actor)
    return count
