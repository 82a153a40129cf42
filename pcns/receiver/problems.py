"""RFC 9457 problem details. A problem never echoes any part of the request."""

from __future__ import annotations

import json

from aiohttp import web

PROBLEM_TYPE = "application/problem+json"


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> web.Response:
    body: dict[str, object] = {"type": f"urn:pcns:problem:{slug}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )
