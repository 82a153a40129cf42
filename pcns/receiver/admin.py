"""The admin API (bearer admin token): a change's status and cancel, find deliveries, retry or
cancel what a filter selects, hold and release targets, and the operators' audit trail.

Every bulk action is recorded with who asked (the ``pcns-actor`` header, else ``admin-token``),
what, the filter and how many rows it touched. An action with an empty filter is refused unless
the body says ``"all": true``.
"""

from __future__ import annotations

import hmac
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from pcns.errors import DatabaseError
from pcns.queue.records import ChangeStatus
from pcns.receiver.admin_models import (
    ACTOR_MAX,
    BulkIn,
    FilterRejected,
    HoldIn,
    action_json,
    delivery_json,
    hold_json,
    list_query,
    parse_json,
)
from pcns.receiver.context import CONTEXT, RETRY_AFTER_SECONDS, ReceiverContext
from pcns.receiver.problems import problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_ACTION_BODY = 16 * 1024


def _admin_ok(ctx: ReceiverContext, request: web.Request) -> bool:
    given = request.headers.get("Authorization", "")
    if ctx.admin_token is None or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given[7:].encode(), ctx.admin_token.encode())


def _unavailable() -> web.Response:
    return problem(
        503,
        "database-unavailable",
        "Service Unavailable",
        "database unavailable",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def admin(handler: Handler) -> Handler:
    """The admin token is required; a bad request or an unreachable database is problem+json."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if not _admin_ok(request.app[CONTEXT], request):
            return problem(
                401,
                "admin-token",
                "Unauthorized",
                "a valid admin bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="pcns"'},
            )
        try:
            return await handler(request)
        except FilterRejected as exc:
            return problem(400, "invalid-request", "Bad Request", exc.detail)
        except DatabaseError:
            return _unavailable()

    return guarded


def _actor(request: web.Request) -> str:
    given = request.headers.get("pcns-actor", "").strip()
    if not given:
        return "admin-token"
    if len(given) > ACTOR_MAX or not given.isprintable():
        raise FilterRejected(f"pcns-actor header: at most {ACTOR_MAX} printable characters")
    return given


def _uuid(request: web.Request, what: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        return None


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_ACTION_BODY:
        raise FilterRejected(f"body exceeds {MAX_ACTION_BODY} bytes")
    body = await request.content.read(MAX_ACTION_BODY + 1)
    if len(body) > MAX_ACTION_BODY:
        raise FilterRejected(f"body exceeds {MAX_ACTION_BODY} bytes")
    return body


def _status_json(status: ChangeStatus) -> dict[str, object]:
    def ts(value: object) -> object:
        return value.isoformat() if hasattr(value, "isoformat") else value

    return {
        "id": str(status.id),
        "source": status.source,
        "user": status.user,
        "domain": status.domain,
        "received_at": ts(status.received_at),
        "deliveries": [
            {
                "target": d.target,
                "account": d.account,
                "state": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "created_at": ts(d.created_at),
                "updated_at": ts(d.updated_at),
                "next_attempt_at": ts(d.next_attempt_at),
                "finished_at": ts(d.finished_at),
            }
            for d in status.deliveries
        ],
    }


@admin
async def get_password_change(request: web.Request) -> web.StreamResponse:
    """Per-target state of one change."""
    return await _change_call(request, cancel=False)


@admin
async def cancel_password_change(request: web.Request) -> web.StreamResponse:
    """Cancel the change's pending and parked deliveries: they end ``cancelled`` and their
    ciphertexts are deleted. A delivery already in flight finishes; delivered ones stay."""
    return await _change_call(request, cancel=True)


async def _change_call(request: web.Request, *, cancel: bool) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    change_id = _uuid(request, "change")
    if change_id is None:
        return problem(404, "not-found", "Not Found", "no change with that id")
    if cancel:
        for target in await ctx.queue.cancel(change_id):
            ctx.metrics.ended.labels(target, "cancelled").inc()
    status = await ctx.queue.status(change_id)
    if status is None:
        return problem(404, "not-found", "Not Found", "no change with that id")
    return web.json_response(_status_json(status))


@admin
async def list_deliveries(request: web.Request) -> web.StreamResponse:
    """One page of deliveries, newest first; ``next`` is the ``before`` of the next page."""
    ctx = request.app[CONTEXT]
    page = list_query(request.query, request.query.getall("state", []))
    found = await ctx.queue.find(page.to_filter(), limit=page.limit, before=page.before)
    more = len(found) == page.limit
    return web.json_response(
        {
            "deliveries": [delivery_json(d) for d in found],
            "next": str(found[-1].id) if more and found else None,
        }
    )


@admin
async def get_delivery(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    delivery_id = _uuid(request, "delivery")
    found = await ctx.queue.get(delivery_id) if delivery_id is not None else None
    if found is None:
        return problem(404, "not-found", "Not Found", "no delivery with that id")
    return web.json_response(delivery_json(found))


async def _bulk_action(request: web.Request, action: str) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    actor = _actor(request)
    body: BulkIn = parse_json(BulkIn, await _body(request))
    f = body.to_filter()
    if f.is_empty() and not body.all:
        raise FilterRejected(
            'an empty filter selects every delivery: narrow it, or send "all": true'
        )
    run = ctx.queue.retry if action == "retry" else ctx.queue.cancel_matching
    targets = await run(f, actor=actor, dry_run=body.dry_run)
    per_target = Counter(targets)
    if action == "cancel" and not body.dry_run:
        for target, n in per_target.items():
            ctx.metrics.ended.labels(target, "cancelled").inc(n)
    return web.json_response(
        {
            "action": action,
            "dry_run": body.dry_run,
            "count": len(targets),
            "targets": dict(sorted(per_target.items())),
        }
    )


@admin
async def retry_deliveries(request: web.Request) -> web.StreamResponse:
    """Parked deliveries (and pending ones waiting out a backoff) become due now."""
    return await _bulk_action(request, "retry")


@admin
async def cancel_deliveries(request: web.Request) -> web.StreamResponse:
    """Pending and parked deliveries end cancelled; their ciphertexts are deleted."""
    return await _bulk_action(request, "cancel")


@admin
async def list_holds(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    return web.json_response({"holds": [hold_json(h) for h in await ctx.queue.holds()]})


@admin
async def hold_target(request: web.Request) -> web.StreamResponse:
    """Hold a configured target: its deliveries wait, visible as held, until released."""
    ctx = request.app[CONTEXT]
    target = request.match_info["name"]
    if target not in ctx.target_names:
        return problem(404, "not-found", "Not Found", "no configured target with that name")
    actor = _actor(request)
    body: HoldIn = parse_json(HoldIn, await _body(request))
    await ctx.queue.hold_target(target, actor=actor, until=body.until, reason=body.reason)
    held = next(h for h in await ctx.queue.holds() if h.target == target)
    return web.json_response(hold_json(held))


@admin
async def release_target(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    target = request.match_info["name"]
    if not await ctx.queue.release_target(target, actor=_actor(request)):
        return problem(404, "not-found", "Not Found", "that target is not held")
    return web.json_response({"target": target, "released": True})


@admin
async def operator_audit(request: web.Request) -> web.StreamResponse:
    """The operators' audit trail, newest first (``limit``, at most 1000)."""
    ctx = request.app[CONTEXT]
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise FilterRejected("limit: must be a whole number from 1 to 1000")
    actions = await ctx.queue.operator_actions(int(raw))
    return web.json_response({"actions": [action_json(a) for a in actions]})


def add_admin_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/password-changes/{id}", get_password_change)
    r.add_delete("/v1/password-changes/{id}", cancel_password_change)
    r.add_get("/v1/deliveries", list_deliveries)
    r.add_post("/v1/deliveries/retry", retry_deliveries)
    r.add_post("/v1/deliveries/cancel", cancel_deliveries)
    r.add_get("/v1/deliveries/{id}", get_delivery)
    r.add_get("/v1/targets/holds", list_holds)
    r.add_put("/v1/targets/{name}/hold", hold_target)
    r.add_delete("/v1/targets/{name}/hold", release_target)
    r.add_get("/v1/audit", operator_audit)
