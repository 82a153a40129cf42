"""The security team's hook-key operations: create, rotate, list, export, retire.

A hook key is the P-256 recipient that hooks seal changes to. Its private half is wrapped by the
KEK like a data key and only ever unwrapped in the receivers' memory. Every operation is audited
in ``pcns_key_audit`` and announced with NOTIFY, so running receivers load a new key (or drop a
retired one) without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from pcns.errors import PcnsError
from pcns.keys.policy import new_hook_key_id
from pcns.queue.hook_keys import HookKeyRow
from pcns.queue.key_store import KeyStatements, KeyStore
from vault import HookPublicKey, KekProvider, new_hook_key_pair

log = structlog.get_logger(__name__)


class HookKeyError(PcnsError):
    """A hook-key operation was refused; the message says why."""


@dataclass(frozen=True, slots=True)
class HookKeyInfo:
    state: str
    created_at: str
    public: HookPublicKey

    @property
    def id(self) -> str:
        return self.public.key_id


async def list_hook_keys(store: KeyStore) -> list[HookKeyInfo]:
    async with store.session() as s:
        rows = await s.hook_keys()
    return [
        HookKeyInfo(
            r.state, r.created_at.isoformat(timespec="seconds"), HookPublicKey(r.id, r.public_key)
        )
        for r in rows
    ]


async def public_key(store: KeyStore, key_id: str | None) -> HookPublicKey:
    """The public half of ``key_id``, or of the current key when None."""
    for info in await list_hook_keys(store):
        if key_id is None and info.state == "current":
            return info.public
        if info.id == key_id:
            if info.state == "retired":
                raise HookKeyError(f"hook key {key_id!r} is retired; export the current one")
            return info.public
    if key_id is None:
        raise HookKeyError("there is no hook key yet; run `pcns keys hook create`")
    raise HookKeyError(f"no hook key {key_id!r}")


async def create(store: KeyStore, kek: KekProvider, *, actor: str, rotate: bool) -> str:
    """Make a new current hook key. ``rotate`` False refuses when one exists already; True keeps
    the previous current key active (it still opens what hooks sealed to it) until retired."""
    key_id = new_hook_key_id()
    scalar, point = new_hook_key_pair()
    wrapped = await kek.wrap(key_id, scalar)
    async with store.transaction() as s:
        live = [r for r in await s.hook_keys() if r.state != "retired"]
        if live and not rotate:
            raise HookKeyError(
                f"a hook key exists already ({live[-1].id}); use `pcns keys hook rotate`"
            )
        if rotate and not live:
            raise HookKeyError("there is no hook key to rotate; run `pcns keys hook create`")
        previous = await s.insert_current_hook_key(key_id, wrapped, point)
        action = "hook-rotate" if rotate else "hook-create"
        await s.audit(actor, action, key_id, {"previous": previous, "kek": kek.name})
        await s.notify_keys_changed()
    log.info("hook_key_created", key_id=key_id, previous=previous, actor=actor)
    return key_id


async def retire(store: KeyStore, *, actor: str, key_id: str) -> None:
    """Destroy a hook key's private half; refused for the current key. A change still spooled
    on a DC under this key can no longer be opened: pcns answers it 400."""
    async with store.transaction() as s:
        row = next((r for r in await s.hook_keys() if r.id == key_id), None)
        if row is None:
            raise HookKeyError(f"no hook key {key_id!r}")
        if row.state == "retired":
            raise HookKeyError(f"hook key {key_id!r} is already retired")
        if row.state == "current":
            raise HookKeyError(f"hook key {key_id!r} is current; rotate first")
        await s.destroy_hook_key(key_id)
        await s.audit(actor, "hook-retire", key_id, {"previous_state": row.state})
        await s.notify_keys_changed()
    log.info("hook_key_retired", key_id=key_id, actor=actor)


async def rewrap_all(s: KeyStatements, kek: KekProvider) -> int:
    """Rewrap every live hook key under the current KEK (inside ``rotate-kek``'s transaction)."""
    count = 0
    for row in await s.hook_keys():
        if row.wrapped is None or await kek.is_current(row.wrapped):
            continue
        await s.set_hook_wrapped(row.id, await kek.rewrap(row.id, row.wrapped))
        count += 1
    return count


async def unwrap_all(rows: list[HookKeyRow], kek: KekProvider) -> dict[str, bytes]:
    """The private scalars of the live hook keys."""
    return {r.id: await kek.unwrap(r.id, r.wrapped) for r in rows if r.wrapped is not None}
