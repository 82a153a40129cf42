"""The composition root: config -> vault -> queue -> targets -> workers -> HTTP app.

Nothing else constructs these. The building blocks are async context managers, so every
command (``serve``, ``db``, ``keys``, ``targets check``) gets the same database, KEK and
targets, built and closed the same way: :func:`open_database`, :func:`admin_resources`,
:func:`configured_targets`, and :func:`running_service` for the whole service.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from pcns.config import Role, ServerSettings, Settings, load_settings
from pcns.config_check import validated_adapter_settings
from pcns.database import Database, create_pool, database_url
from pcns.delivery.protection import TargetGuard
from pcns.delivery.worker import DeliveryWorker
from pcns.errors import ConfigError
from pcns.health import TargetHealth
from pcns.keys.manager import KeyManager
from pcns.metrics import Metrics
from pcns.queue.deliveries import DeliveryQueue
from pcns.queue.key_store import KeyStore
from pcns.queue.migrate import migrate_database
from pcns.queue.upkeep import observe_queue, prune_history
from pcns.receiver.committer import GroupCommitter
from pcns.receiver.context import CONTEXT, ReceiverContext
from pcns.receiver.http import add_routes, problem_middleware
from pcns.reload import Reloader, protection_of
from pcns.routing import Router
from pcns.secret_files import read_private_file, read_webhook_secret
from targets.base import Target, load_target_types
from vault import FileKek, KekProvider, TransitConfig, TransitKek

log = structlog.get_logger(__name__)

COMMIT_FLUSHERS = 1  # see pcns.receiver.committer
ADMIN_POOL_SIZE = 4


def build_targets(settings: Settings) -> dict[str, Target]:
    """Validate every ``[[targets]]`` table against its adapter's model (all problems reported
    at once, each naming its key) and construct the adapters.

    Only the configured types' adapters are imported; one whose optional library is missing
    stops the start with a message naming the extra to install.
    """
    validated = validated_adapter_settings(settings)
    types = load_target_types({cfg.type for cfg in settings.targets})
    return {cfg.name: types[cfg.type](cfg.name, validated[cfg.name]) for cfg in settings.targets}


@asynccontextmanager
async def configured_targets(settings: Settings) -> AsyncIterator[dict[str, Target]]:
    """Every configured target, built; each one closed when the block ends."""
    built = build_targets(settings)
    try:
        yield built
    finally:
        for adapter in built.values():
            await adapter.close()


def build_kek(settings: Settings) -> KekProvider:
    """The configured key-encryption key provider; a missing or unsafe KEK fails here, at start."""
    vault = settings.vault
    if vault.kek == "file":
        return FileKek(vault.keyring)
    t = vault.transit
    assert t is not None  # validated with the settings
    # The settings model and the library dataclass share their field names.
    return TransitKek(TransitConfig(**t.model_dump()))


@asynccontextmanager
async def open_database(
    settings: Settings, *, pool_size: int | None = None, migrate: bool = True
) -> AsyncIterator[Database]:
    """The configured PostgreSQL (or the embedded one), pooled, with every migration applied
    unless ``migrate`` is False."""
    size = pool_size or settings.database.pool_size
    async with (
        database_url(settings.database) as url,
        create_pool(url, size=size, wait=settings.database.connect_wait) as db,
    ):
        if migrate:
            await migrate_database(db)
        yield db


@dataclass(frozen=True)
class AdminResources:
    """What a one-shot administration command works with."""

    queue: DeliveryQueue
    keys: KeyStore
    kek: KekProvider


@asynccontextmanager
async def admin_resources(settings: Settings) -> AsyncIterator[AdminResources]:
    """The database (migrated) and the KEK, for ``pcns db`` and ``pcns keys`` commands."""
    kek = build_kek(settings)
    try:
        async with open_database(settings, pool_size=ADMIN_POOL_SIZE) as db:
            yield AdminResources(DeliveryQueue(db), KeyStore(db), kek)
    finally:
        await kek.close()


def server_ssl_context(server: ServerSettings) -> ssl.SSLContext | None:
    if server.tls_cert is None or server.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(server.tls_cert, server.tls_key)
    if server.client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(server.client_ca)
    return ctx


@dataclass(frozen=True)
class RunningService:
    url: str
    queue: DeliveryQueue
    key_store: KeyStore
    metrics: Metrics
    reloader: Reloader

    async def reload(self, settings: Settings) -> bool:
        """Apply a re-read configuration (see :mod:`pcns.reload`); False when refused."""
        return await self.reloader.reload(settings)

    async def reload_from(self, path: Path) -> bool:
        """``SIGHUP``: read ``path`` again and apply it; a bad file is refused, logged."""
        try:
            settings = load_settings(path)
        except ConfigError as exc:
            log.error("config_reload_refused", reason=str(exc))
            return False
        return await self.reload(settings)


@asynccontextmanager
async def running_service(
    settings: Settings, *, role: Role = "all", stop: asyncio.Event | None = None
) -> AsyncIterator[RunningService]:
    """Start every part the role needs; on exit stop HTTP first, then commit, then deliver."""
    stop = stop or asyncio.Event()
    receiver = role in ("receiver", "all")
    worker = role in ("worker", "all")
    kek = build_kek(settings)
    # A worker-only host needs neither the sources' secrets nor the admin token.
    sources = (
        {s.id: read_webhook_secret(s.secret_file) for s in settings.sources} if receiver else {}
    )
    admin_token = read_private_file(settings.admin.token_file, "admin token") if receiver else None
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(kek.close)
        targets: dict[str, Target] = {}
        health = TargetHealth([t.name for t in settings.targets]) if worker else None
        reloader = Reloader(settings=settings, build_targets=build_targets, build_kek=build_kek)
        stack.push_async_callback(reloader.close)
        if worker:
            reloader.targets = targets = build_targets(settings)
            # The adapters running at exit: a reload may have replaced some.
            stack.push_async_callback(_close_targets, reloader)
        else:
            # A receiver builds no target, but refuses the same tables a worker would.
            validated_adapter_settings(settings)
        db = await stack.enter_async_context(open_database(settings))
        queue, key_store = DeliveryQueue(db), KeyStore(db)
        keys = await stack.enter_async_context(
            KeyManager(
                store=key_store,
                kek=kek,
                settings=settings.vault,
                metrics=metrics,
                auto_rotate=worker,
                hook_keys=receiver,  # only a receiver opens sealed changes
            )
        )
        delivery_worker: DeliveryWorker | None = None
        if worker:
            delivery_worker = await stack.enter_async_context(
                DeliveryWorker(
                    queue=queue,
                    keys=keys,
                    targets=targets,
                    guards={
                        t.name: TargetGuard(t.name, protection_of(t)) for t in settings.targets
                    },
                    settings=settings.delivery,
                    metrics=metrics,
                    health=health,
                )
            )
            assert health is not None
            _background(stack, health.check_all(targets))
            if settings.database.retention is not None:
                _background(stack, prune_history(queue, metrics, settings.database.retention, stop))
        committer = None
        if receiver:
            committer = await stack.enter_async_context(
                GroupCommitter(
                    queue, max_batch=settings.server.commit_batch, flushers=COMMIT_FLUSHERS
                )
            )
        # One list, shared with the reloader: the gauges follow a reload's targets.
        target_names = reloader.target_names = [t.name for t in settings.targets]
        _background(
            stack, observe_queue(queue, key_store, metrics, target_names, keys.keyring, stop)
        )
        app = web.Application(middlewares=[problem_middleware])
        app[CONTEXT] = ReceiverContext(
            queue=queue,
            keys=keys.keyring,
            hook_keys=keys.hook_keys,
            router=Router(settings.targets),
            sources=sources,
            sealed_sources=frozenset(s.id for s in settings.sources if s.require_sealed),
            admin_token=admin_token,
            metrics=metrics,
            max_body_bytes=settings.server.max_body_bytes,
            timestamp_tolerance=settings.server.timestamp_tolerance,
            committer=committer,
            target_names=frozenset(target_names),
            target_health=health,
        )
        add_routes(app, receiver=receiver)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        tls = server_ssl_context(settings.server)
        site = web.TCPSite(
            runner,
            settings.server.host,
            settings.server.port,
            ssl_context=tls,
            reuse_address=True,
        )
        await site.start()
        scheme = "https" if tls else "http"
        public = f"{scheme}://{settings.server.listen}"
        log.info("service_started", listen=public, role=role, targets=sorted(targets))
        reloader.keys = keys
        reloader.context = app[CONTEXT] if receiver else None
        reloader.worker = delivery_worker
        reloader.health = health
        yield RunningService(
            url=public, queue=queue, key_store=key_store, metrics=metrics, reloader=reloader
        )
        stop.set()
        log.info("service_stopping", role=role)


def _background(stack: AsyncExitStack, coro: Coroutine[object, object, None]) -> None:
    """Run ``coro`` until the stack unwinds, then cancel it."""
    stack.push_async_callback(_cancel, asyncio.create_task(coro))


async def _close_targets(reloader: Reloader) -> None:
    for adapter in reloader.targets.values():
        await adapter.close()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_service(
    settings: Settings,
    *,
    role: Role,
    stop: asyncio.Event,
    on_started: Callable[[RunningService], None] | None = None,
) -> None:
    """Run until ``stop`` is set (SIGTERM/SIGINT in ``pcns serve``)."""
    async with running_service(settings, role=role, stop=stop) as service:
        if on_started is not None:
            on_started(service)
        await stop.wait()
