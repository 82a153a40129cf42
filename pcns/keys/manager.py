"""Each process's view of the data keys: loaded at start, refreshed on NOTIFY or by polling,
so a rotation reaches every receiver and worker within seconds and without a restart."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from pcns.config import VaultSettings
from pcns.errors import DatabaseError
from pcns.keys.admin import ensure_primary, rotate
from pcns.keys.hook_admin import unwrap_all
from pcns.keys.policy import due_for_rotation
from pcns.metrics import Metrics
from pcns.queue.hook_keys import HookKeyRow
from pcns.queue.key_store import KeyStore
from pcns.queue.keys import DataKeyRow
from vault import HookKeyring, KekError, KekProvider, Keyring, VaultError

log = structlog.get_logger(__name__)


class KeyManager:
    """Holds the unwrapped data keys of this process in a :class:`vault.Keyring`, and the
    private halves of the hook keys in a :class:`vault.HookKeyring`.

    ``async with KeyManager(...) as keys``: loads the keys (creating the first data key when the
    database has none), keeps them fresh until the block ends, then records the last counts.
    """

    def __init__(
        self,
        *,
        store: KeyStore,
        kek: KekProvider,
        settings: VaultSettings,
        metrics: Metrics,
        auto_rotate: bool,
        hook_keys: bool = True,
    ) -> None:
        self.keyring = Keyring()
        self.hook_keys = HookKeyring()
        self._hook_scalars: dict[str, bytes] = {}
        # Hook keys' private halves are unwrapped only where sealed changes are opened.
        self._load_hook_keys = hook_keys
        self.kek = kek
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._auto_rotate = auto_rotate
        self._unwrapped: dict[str, bytes] = {}
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._rotating: asyncio.Task[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"KeyManager(kek={self.kek.name!r}, keyring={self.keyring!r})"

    def replace_kek(self, kek: KekProvider, settings: VaultSettings) -> KekProvider:
        """Use a KEK built again from a reloaded configuration; returns the old one to close.
        Keys already unwrapped stay as they are; new ones are unwrapped with ``kek``."""
        old, self.kek, self._settings = self.kek, kek, settings
        return old

    async def __aenter__(self) -> KeyManager:
        await self.load()
        self._task = asyncio.create_task(self._run(), name="pcns-keys")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def load(self) -> None:
        """First load; creates the first data key when the database has none."""
        async with self._store.session() as s:
            rows = await s.data_keys()
        if not any(r.state == "primary" for r in rows):
            await ensure_primary(self._store, self.kek, actor="pcns (first start)")
        await self.refresh()

    async def refresh(self) -> None:
        async with self._store.session() as s:
            rows = await s.data_keys()
            hook_rows = await s.hook_keys()
        await self._install(rows)
        await self._install_hook_keys(hook_rows)

    async def _install_hook_keys(self, rows: list[HookKeyRow]) -> None:
        if not self._load_hook_keys:
            return
        live = [r for r in rows if r.wrapped is not None]  # a retired key is dropped here
        fresh = await unwrap_all([r for r in live if r.id not in self._hook_scalars], self.kek)
        scalars = {r.id: self._hook_scalars.get(r.id) or fresh[r.id] for r in live}
        if scalars.keys() != self._hook_scalars.keys():
            self.hook_keys.install(scalars)
            log.info("hook_keys_loaded", key_ids=sorted(scalars))
        self._hook_scalars = scalars

    async def ensure(self, key_id: str) -> None:
        """Make sure ``key_id`` is loaded if it exists (a worker meeting a brand-new key)."""
        if not self.keyring.has(key_id):
            await self.refresh()

    async def _install(self, rows: list[DataKeyRow]) -> None:
        keys: dict[str, bytes] = {}
        for row in rows:
            if row.wrapped is None:
                continue  # retired: destroyed
            raw = self._unwrapped.get(row.id)
            if raw is None:
                raw = await self.kek.unwrap(row.id, row.wrapped)
            keys[row.id] = raw
        primary = next((r.id for r in rows if r.state == "primary"), None)
        before = self.keyring.primary_id
        self.keyring.install(keys, primary)
        self._unwrapped = keys
        if before is not None and primary != before:
            log.info("primary_data_key_changed", key_id=primary, previous=before)
        for row in rows:
            self._metrics.dek_age.labels(row.id).set(row.age_seconds if row.wrapped else 0)
            self._metrics.dek_encryptions.labels(row.id).set(row.encryptions)

    async def _run(self) -> None:
        """Refresh on NOTIFY or every ``refresh_interval``; record encryption counts."""
        listener = asyncio.create_task(
            self._store.listen_for_changes(self._changed.set, self._stop)
        )
        try:
            while not self._stop.is_set():
                waiters = [asyncio.create_task(e.wait()) for e in (self._stop, self._changed)]
                await asyncio.wait(
                    waiters,
                    timeout=self._settings.refresh_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in waiters:
                    waiter.cancel()
                if self._stop.is_set():
                    break
                self._changed.clear()
                await self._tick()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            if self._rotating is not None:
                self._rotating.cancel()
                await asyncio.gather(self._rotating, return_exceptions=True)
            with contextlib.suppress(DatabaseError):
                await self._flush_counts()

    async def _tick(self) -> None:
        try:
            await self._flush_counts()
            await self.refresh()
        except DatabaseError as exc:
            log.warning("key_refresh_failed", error=exc.cause)
            return
        except VaultError as exc:
            # Keep the keys already held; new ones cannot be used until the KEK is back.
            log.error("key_refresh_failed", error=str(exc))
            return
        if self._auto_rotate:
            self._maybe_rotate()

    async def _flush_counts(self) -> None:
        counts = self.keyring.take_counts()
        if not counts:
            return
        try:
            async with self._store.session() as s:
                await s.add_encryptions(counts)
        except BaseException:
            self.keyring.restore_counts(counts)  # recorded with the next flush
            raise

    def _maybe_rotate(self) -> None:
        if self._rotating is not None and not self._rotating.done():
            return
        self._rotating = asyncio.create_task(self._auto_rotation())

    async def _auto_rotation(self) -> str:
        try:
            async with self._store.session() as s:
                reason = due_for_rotation(await s.data_keys(), self._settings)
            if reason is None:
                return ""
            return await rotate(
                self._store,
                self.kek,
                actor="pcns (automatic rotation)",
                reason=reason,
                propagation=self._settings.refresh_interval,
                settings=self._settings,
            )
        except (KekError, DatabaseError) as exc:
            log.error("automatic_rotation_failed", error=str(exc) or type(exc).__name__)
            return ""
