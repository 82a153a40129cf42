"""The composition root: config -> vault -> queue -> targets -> workers -> HTTP app.

Nothing else constructs these; tests and the CLI go through :func:`run_service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
import structlog
from aiohttp import web
from pydantic import ValidationError

from pcns.config import Role, ServerSettings, Settings, TargetConfig, format_validation_error
from pcns.database import UNAVAILABLE_ERRORS, create_pool, database_url
from pcns.delivery.protection import Protection, TargetGuard
from pcns.delivery.worker import DeliveryWorker
from pcns.errors import ConfigError
from pcns.keys.manager import KeyManager
from pcns.metrics import Metrics
from pcns.queue.keys import ciphertexts_per_key
from pcns.queue.migrate import migrate
from pcns.queue.retention import prune_finished
from pcns.queue.store import queue_stats
from pcns.receiver.committer import GroupCommitter
from pcns.receiver.http import CONTEXT, ReceiverContext, add_routes, problem_middleware
from pcns.routing import Router
from pcns.secret_files import read_private_file, read_webhook_secret
from targets.base import Target, load_target_types
from vault import FileKek, KekProvider, Keyring, TransitConfig, TransitKek

log = structlog.get_logger(__name__)

STATS_INTERVAL = 5.0
PRUNE_FIRST_DELAY = 60.0
PRUNE_INTERVAL = 3600.0
COMMIT_FLUSHERS = 1  # see pcns.receiver.committer


def build_targets(settings: Settings) -> dict[str, Target]:
    """Validate each ``[[targets]]`` table against its adapter's model and construct it."""
    types = load_target_types()
    built: dict[str, Target] = {}
    for i, cfg in enumerate(settings.targets):
        factory = types.get(cfg.type)
        if factory is None:
            raise ConfigError(
                f"targets.{i}.type: unknown target type {cfg.type!r}; installed: {sorted(types)}"
            )
        try:
            adapter_settings = factory.settings_model.model_validate(cfg.adapter_fields())
        except ValidationError as exc:
            raise ConfigError(f"targets.{i} ({cfg.name}): {format_validation_error(exc)}") from None
        built[cfg.name] = factory(cfg.name, adapter_settings)
    return built


def protection_of(target: TargetConfig) -> Protection:
    return Protection(
        max_concurrency=target.max_concurrency,
        rate_limit=target.rate_limit,
        breaker_threshold=target.breaker_threshold,
        breaker_cooldown=target.breaker_cooldown,
    )


def build_kek(settings: Settings) -> KekProvider:
    """The configured key-encryption key provider; a missing or unsafe KEK fails here, at start."""
    vault = settings.vault
    if vault.kek == "file":
        return FileKek(vault.keyring)
    t = vault.transit
    assert t is not None  # validated with the settings
    # The settings model and the library dataclass share their field names.
    return TransitKek(TransitConfig(**t.model_dump()))


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
    pool: asyncpg.Pool
    metrics: Metrics


@asynccontextmanager
async def running_service(
    settings: Settings, *, role: Role = "all", stop: asyncio.Event | None = None
) -> AsyncIterator[RunningService]:
    """Start every part the role needs; on exit stop HTTP first, then commit, then deliver."""
    stop = stop or asyncio.Event()
    receiver = role in ("receiver", "all")
    kek = build_kek(settings)
    # A worker-only host needs neither the sources' secrets nor the admin token.
    sources = (
        {s.id: read_webhook_secret(s.secret_file) for s in settings.sources} if receiver else {}
    )
    admin_token = read_private_file(settings.admin.token_file, "admin token") if receiver else None
    targets = build_targets(settings) if role != "receiver" else {}
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(kek.close)
        for adapter in targets.values():
            stack.push_async_callback(adapter.close)
        url = await stack.enter_async_context(database_url(settings.database))
        pool = await stack.enter_async_context(
            create_pool(url, size=settings.database.pool_size, wait=settings.database.connect_wait)
        )
        async with pool.acquire() as conn:
            await migrate(conn)
        keys = KeyManager(
            pool=pool,
            url=url,
            kek=kek,
            settings=settings.vault,
            metrics=metrics,
            auto_rotate=role != "receiver",
            hook_keys=receiver,  # only a receiver opens sealed changes
        )
        await keys.load()
        key_task = asyncio.create_task(keys.run(stop), name="pcns-keys")
        stack.push_async_callback(_stop_and_await, key_task, stop)
        worker_task: asyncio.Task[None] | None = None
        if role in ("worker", "all"):
            worker = DeliveryWorker(
                pool=pool,
                url=url,
                keys=keys,
                targets=targets,
                guards={t.name: TargetGuard(t.name, protection_of(t)) for t in settings.targets},
                settings=settings.delivery,
                metrics=metrics,
            )
            worker_task = asyncio.create_task(worker.run(stop), name="pcns-worker")
            stack.push_async_callback(_stop_and_await, worker_task, stop)
            if settings.database.retention is not None:
                prune_task = asyncio.create_task(
                    _prune_history(pool, metrics, settings.database.retention, stop),
                    name="pcns-prune",
                )
                stack.push_async_callback(_cancel, prune_task)
        committer = None
        if receiver:
            committer = await stack.enter_async_context(
                GroupCommitter(
                    pool, max_batch=settings.server.commit_batch, flushers=COMMIT_FLUSHERS
                )
            )
        stats_task = asyncio.create_task(
            _observe_queue(pool, metrics, [t.name for t in settings.targets], keys.keyring, stop)
        )
        stack.push_async_callback(_cancel, stats_task)
        app = web.Application(middlewares=[problem_middleware])
        app[CONTEXT] = ReceiverContext(
            pool=pool,
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
        yield RunningService(url=public, pool=pool, metrics=metrics)
        stop.set()
        log.info("service_stopping", role=role)


async def _stop_and_await(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _observe_queue(
    pool: asyncpg.Pool,
    metrics: Metrics,
    targets: list[str],
    keyring: Keyring,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        try:
            async with pool.acquire(timeout=5) as conn:
                stats = await queue_stats(conn)
                sealed = await ciphertexts_per_key(conn)
            metrics.observe_queue(targets, stats)
            metrics.observe_ciphertexts(set(keyring.key_ids), sealed)
            metrics.database_up.set(1)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            metrics.database_up.set(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=STATS_INTERVAL)


async def _prune_history(
    pool: asyncpg.Pool, metrics: Metrics, retention: float, stop: asyncio.Event
) -> None:
    """``database.retention``: delete finished history once an hour, the first time a minute
    after start (not while the service is still coming up)."""
    delay = PRUNE_FIRST_DELAY
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        if stop.is_set():
            return
        delay = PRUNE_INTERVAL
        try:
            pruned = await prune_finished(pool, older_than=retention)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("history_prune_failed", error=type(exc).__name__)
            continue
        metrics.pruned.labels("deliveries").inc(pruned.deliveries)
        metrics.pruned.labels("changes").inc(pruned.changes)
        log.info(
            "history_pruned",
            deliveries=pruned.deliveries,
            changes=pruned.changes,
            skipped=pruned.skipped,
        )


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
