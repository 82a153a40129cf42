"""``SIGHUP``: re-read the configuration and apply what can change in a running process.

Applied live: targets (added, changed, removed), routing, sources and their secrets, the admin
token, the intake limits, the delivery settings (except ``claimers``) and the key material (the
KEK is built again, then the keys reloaded). The listener, TLS files, the database and the KEK
provider's kind need a restart: a change to one of them refuses the whole reload, as does any
invalid value, a secret file serve would refuse or a target that cannot be built. A refused
reload logs the key and keeps the running configuration whole.

A removed target's deliveries stay queued and visible; the adapters that were replaced or
removed are closed once no attempt uses them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from pcns.config import Settings, TargetConfig
from pcns.config_check import validated_adapter_settings
from pcns.delivery.protection import Protection, TargetGuard
from pcns.delivery.worker import DeliveryWorker
from pcns.errors import PcnsError
from pcns.health import TargetHealth
from pcns.keys.manager import KeyManager
from pcns.receiver.context import ReceiverContext
from pcns.routing import Router
from pcns.secret_files import read_private_file, read_webhook_secret
from targets.base import Target
from vault import KekProvider, VaultError

log = structlog.get_logger(__name__)

# Keys a running process cannot change: (section, fields); None means the whole section.
FIXED: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("server", ("listen", "tls_cert", "tls_key", "client_ca", "commit_batch")),
    ("database", None),
    ("vault", ("kek",)),
    ("delivery", ("claimers",)),
)


class ReloadRefused(PcnsError):
    """The new configuration was not applied; the message names the key."""


def fixed_changes(old: Settings, new: Settings) -> list[str]:
    """The keys that changed but need a restart."""
    changed = []
    for section, names in FIXED:
        before: dict[str, Any] = getattr(old, section).model_dump()
        after: dict[str, Any] = getattr(new, section).model_dump()
        for key in names or sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changed.append(f"{section}.{key}")
    return changed


def protection_of(target: TargetConfig) -> Protection:
    return Protection(
        max_concurrency=target.max_concurrency,
        rate_limit=target.rate_limit,
        breaker_threshold=target.breaker_threshold,
        breaker_cooldown=target.breaker_cooldown,
    )


@dataclass(repr=False)  # the context holds the sources' secrets and the admin token
class Reloader:
    """The running parts a reload touches, and how to build what it replaces."""

    settings: Settings
    build_targets: Callable[[Settings], dict[str, Target]]
    build_kek: Callable[[Settings], KekProvider]
    keys: KeyManager | None = None  # set once the keys are loaded
    context: ReceiverContext | None = None  # receivers
    worker: DeliveryWorker | None = None  # workers
    targets: dict[str, Target] = field(default_factory=dict)
    health: TargetHealth | None = None
    target_names: list[str] = field(default_factory=list)  # shared with the queue gauges
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    async def reload(self, new: Settings) -> bool:
        """Apply ``new``; False (logged, nothing changed) when it is refused."""
        async with self._lock:
            try:
                await self._apply(new)
            except (ReloadRefused, PcnsError, VaultError) as exc:
                log.error("config_reload_refused", reason=str(exc))
                return False
            return True

    async def _apply(self, new: Settings) -> None:
        old = self.settings
        fixed = fixed_changes(old, new)
        if fixed:
            raise ReloadRefused(f"{', '.join(fixed)}: changing this needs a restart")
        sources: dict[str, bytes] = {}
        admin_token = None
        if self.context is not None:
            sources = {s.id: read_webhook_secret(s.secret_file) for s in new.sources}
            admin_token = read_private_file(new.admin.token_file, "admin token")
        kek = self.build_kek(new)
        try:
            added, replaced, removed = await self._new_targets(old, new)
        except BaseException:
            await kek.close()
            raise
        # Nothing below can fail: the new configuration is applied as a whole.
        assert self.keys is not None
        old_kek = self.keys.replace_kek(kek, new.vault)
        self._close_later_kek(old_kek)
        if self.context is not None:
            ctx = self.context
            ctx.router = Router(new.targets)
            ctx.sources = sources
            ctx.sealed_sources = frozenset(s.id for s in new.sources if s.require_sealed)
            ctx.admin_token = admin_token
            ctx.max_body_bytes = new.server.max_body_bytes
            ctx.timestamp_tolerance = new.server.timestamp_tolerance
            ctx.target_names = frozenset(t.name for t in new.targets)
        self.target_names[:] = [t.name for t in new.targets]
        if self.worker is not None:
            self._swap_targets(new, added, replaced, removed)
        self.settings = new
        log.info(
            "config_reloaded",
            targets_added=sorted(added),
            targets_changed=sorted(replaced),
            targets_removed=sorted(removed),
            sources=sorted(sources) if self.context is not None else None,
        )
        try:
            await self.keys.refresh()
        except (PcnsError, VaultError) as exc:
            log.warning("key_refresh_failed", error=str(exc) or type(exc).__name__)

    async def _new_targets(
        self, old: Settings, new: Settings
    ) -> tuple[dict[str, Target], dict[str, Target], set[str]]:
        """Build the added and changed targets (all or none); the removed ones' names."""
        before = {t.name: t for t in old.targets}
        after = {t.name: t for t in new.targets}
        removed = set(before) - set(after)
        if self.worker is None:
            # A receiver builds no target but refuses what a worker would.
            validated_adapter_settings(new)
            return {}, {}, removed
        wanted = tuple(t for n, t in after.items() if n not in before or before[n] != t)
        built = self.build_targets(new.model_copy(update={"targets": wanted})) if wanted else {}
        added = {n: t for n, t in built.items() if n not in before}
        replaced = {n: t for n, t in built.items() if n in before}
        return added, replaced, removed

    def _swap_targets(
        self,
        new: Settings,
        added: Mapping[str, Target],
        replaced: Mapping[str, Target],
        removed: Iterable[str],
    ) -> None:
        worker = self.worker
        assert worker is not None
        retired = [self.targets[n] for n in (*replaced, *removed) if n in self.targets]
        targets = {n: t for n, t in self.targets.items() if n not in set(removed)}
        targets.update(added)
        targets.update(replaced)
        guards = dict(worker.guards)
        for cfg in new.targets:
            if cfg.name in added or cfg.name in replaced or cfg.name not in guards:
                guards[cfg.name] = TargetGuard(cfg.name, protection_of(cfg))
        for name in removed:
            guards.pop(name, None)
        worker.apply(targets=targets, guards=guards, settings=new.delivery)
        self.targets = targets
        if self.health is not None:
            self.health.rename([cfg.name for cfg in new.targets])
            fresh = {**added, **replaced}
            if fresh:
                self._spawn(self.health.check_all(fresh))
        for adapter in retired:
            self._spawn(self._close_when_idle(adapter))

    async def _close_when_idle(self, adapter: Target) -> None:
        """Close a replaced or removed adapter once no attempt of its target is in flight."""
        worker = self.worker
        assert worker is not None
        # Bounded by delivery.attempt_timeout: every attempt ends by then.
        while worker.attempts_using(adapter):  # noqa: ASYNC110 - a poll over the in-flight set
            await asyncio.sleep(0.2)
        try:
            await adapter.close()
        except Exception as exc:  # a third-party adapter's close must not stop the reload
            log.warning("target_close_failed", error=type(exc).__name__)

    def _close_later_kek(self, kek: KekProvider) -> None:
        async def close() -> None:
            await asyncio.sleep(1.0)  # an unwrap in progress finishes with the old provider
            await kek.close()

        self._spawn(close())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Wait for the adapters and KEKs being closed."""
        await asyncio.gather(*self._closing, return_exceptions=True)
