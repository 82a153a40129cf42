"""aiohttp handlers: the signed intake, change status, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pcns.errors import DatabaseError, DatabaseUnavailable
from pcns.receiver.admin import add_admin_routes
from pcns.receiver.context import CONTEXT, RETRY_AFTER_SECONDS, ReceiverContext
from pcns.receiver.intake import build_change, change_password
from pcns.receiver.models import BodyRejected, parse_change
from pcns.receiver.problems import problem
from pcns.receiver.signature import SignatureRejected, verify

log = structlog.get_logger(__name__)

# Bound once per application: the per-request line is on the hot path.
REQUEST_LOG = web.AppKey("pcns_request_log", structlog.typing.FilteringBoundLogger)
SOURCE = web.RequestKey("pcns_source", str)
CHANGE_ID = web.RequestKey("pcns_change_id", str)
_JSON = {"Content-Type": "application/json"}


class _BodyTooLarge(Exception):
    pass


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """Read the body from the stream, stopping as soon as it passes ``limit`` bytes.

    A declared Content-Length is enforced by the HTTP parser (it delivers that many bytes and no
    more), so a body that declares a length within the limit is read in one call; a chunked body
    is counted as it streams.
    """
    declared = request.content_length
    if declared is not None:
        if declared > limit:
            raise _BodyTooLarge
        try:
            return await request.content.readexactly(declared)
        except asyncio.IncompleteReadError:
            raise web.HTTPBadRequest(reason="body shorter than its Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _reject(
    ctx: ReceiverContext, reason: str, status: int, title: str, detail: str
) -> web.Response:
    ctx.metrics.rejected.labels(reason).inc()
    return problem(status, reason.replace("_", "-"), title, detail)


async def post_password_change(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    assert ctx.committer is not None
    if request.content_type != "application/json":
        return _reject(
            ctx,
            "unsupported_media_type",
            415,
            "Unsupported Media Type",
            "Content-Type must be application/json",
        )
    source = request.headers.get("pcns-source", "")
    secret = ctx.sources.get(source)
    if secret is not None:
        request[SOURCE] = source
    if secret is None:
        return _reject(
            ctx,
            "unknown_source",
            401,
            "Unauthorized",
            "pcns-source header is missing or names no configured source",
        )
    try:
        body = await _read_capped(request, ctx.max_body_bytes)
    except _BodyTooLarge:
        return _reject(
            ctx,
            "too_large",
            413,
            "Content Too Large",
            f"body exceeds {ctx.max_body_bytes} bytes",
        )
    try:
        webhook_id = verify(secret, request.headers, body, tolerance=ctx.timestamp_tolerance)
    except SignatureRejected as exc:
        return _reject(ctx, exc.reason, 401, "Unauthorized", exc.detail)
    try:
        change_in = parse_change(body)
    except BodyRejected as exc:
        return _reject(ctx, "invalid_body", 400, "Bad Request", exc.detail)
    if change_in.sealed is None and source in ctx.sealed_sources:
        # A hook not yet set up to seal: keep the change at the hook (it retries), don't drop it.
        return _reject(
            ctx,
            "sealed_required",
            403,
            "Forbidden",
            f"source {source} must send sealed changes (sources.require_sealed)",
        )
    try:
        password = change_password(
            change_in, source=source, webhook_id=webhook_id, hook_keys=ctx.hook_keys
        )
    except BodyRejected as exc:
        return _reject(ctx, "sealed_invalid", 400, "Bad Request", exc.detail)
    if change_in.sealed is not None:
        ctx.metrics.child(ctx.metrics.sealed_opened, change_in.sealed.key_id).inc()
    change = build_change(
        change_in,
        password,
        source=source,
        webhook_id=webhook_id,
        router=ctx.router,
        keys=ctx.keys,
    )
    # A str cannot be wiped; dropping the last references lets the plaintext be freed now,
    # rather than live on through the wait for the commit.
    del change_in, password
    try:
        committed = await ctx.committer.submit(change)
    except DatabaseUnavailable:
        ctx.metrics.rejected.labels("database_unavailable").inc()
        return problem(
            503,
            "database-unavailable",
            "Service Unavailable",
            "the change was not stored; send it again later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    m = ctx.metrics
    if committed.new:
        m.child(m.accepted, source).inc()
        for d in change.deliveries:
            if d.failed_reason is not None:
                m.failed.labels(d.target, "account_template").inc()
    else:
        m.child(m.replayed, source).inc()
    request[CHANGE_ID] = str(committed.change_id)
    return web.Response(status=202, body=committed.response.encode(), headers=_JSON)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    checks: dict[str, str] = {}
    try:
        await ctx.queue.ping(timeout=2)
        checks["database"] = "ok"
        ctx.metrics.database_up.set(1)
    except DatabaseError:
        checks["database"] = "unavailable"
        ctx.metrics.database_up.set(0)
    checks["keyring"] = "ok" if ctx.keys.primary_id is not None else "unavailable"
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
    if ctx.target_health is not None:
        # Reported, not counted: a failing application is not fixed by restarting pcns.
        body["targets"] = ctx.target_health.report()
    return web.json_response(body, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    payload = await asyncio.to_thread(generate_latest, ctx.metrics.registry)
    resp = web.Response(body=payload)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is problem+json; one canonical log line per request."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = problem(exc.status, "http-" + str(exc.status), exc.reason)
    except Exception as exc:  # the last line of defence; no handler should get here
        log.error("http_unhandled_error", path=request.path, error=type(exc).__name__)
        response = problem(500, "internal", "Internal Server Error")
    request.app[REQUEST_LOG].info(
        "http_request",
        method=request.method,
        path=request.path if response.status != 404 else "(not found)",
        status=response.status,
        source=request.get(SOURCE),
        change_id=request.get(CHANGE_ID),
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response


def add_routes(app: web.Application, *, receiver: bool) -> None:
    app[REQUEST_LOG] = log.bind()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    if receiver:
        app.router.add_post("/v1/password-changes", post_password_change)
        add_admin_routes(app)
