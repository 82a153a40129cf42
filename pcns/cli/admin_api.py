"""The admin API of a running receiver, as the operators' commands call it.

Every answer other than 200 becomes an :class:`ApiError` carrying one line to print (the
problem's ``detail``, with the API's field names as the command's options) and the exit code:
1 refused, 2 a request pcns calls bad (400), 3 unreachable or its database unavailable (503).
"""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from pcns.client import client_ssl_context
from pcns.config import Settings, load_settings
from pcns.secret_files import read_private_file

EXIT_REJECTED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
FILTER_FIELDS = ("state", "target", "account", "source", "change_id", "since", "until")
# The API's fields a problem's detail may name, each the command's option of that name.
OPTION_FIELDS = frozenset({*FILTER_FIELDS, "limit", "before", "reason"})


class ApiError(Exception):
    """pcns refused the request or could not be reached: a one-line message and the exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def receiver_url(settings: Settings) -> str:
    """The receiver's base URL from ``server.listen``: https when TLS is configured; a wildcard
    address is reached through the loopback."""
    scheme = "https" if settings.server.tls_cert else "http"
    host = settings.server.host
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard listen is reached via loopback
        host = "127.0.0.1"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{settings.server.port}"


def _as_options(detail: str) -> str:
    """A problem's detail with the API's field names (``change_id: ...``) as this command's
    options (``--change-id: ...``)."""
    parts = []
    for part in detail.split("; "):
        field, sep, rest = part.partition(":")
        if sep and field.split(".")[0] in OPTION_FIELDS:
            part = f"--{field.split('.')[0].replace('_', '-')}:{rest}"
        elif sep and field == "pcns-actor header":
            part = f"--actor:{rest}"
        parts.append(part)
    return "; ".join(parts)


@dataclass(frozen=True)
class AdminApi:
    """Calls of the admin API with the admin token and the ``pcns-actor`` header."""

    base: str
    headers: dict[str, str]
    tls: Any  # an ssl.SSLContext, or True: the system's CAs
    session: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str | None] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """The answer's JSON document; :class:`ApiError` for any other answer or none."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        try:
            async with self.session.request(
                method,
                self.base + path,
                params=params,
                json=body,
                headers=self.headers,
                ssl=self.tls,
            ) as resp:
                text, status = await resp.text(), resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(
                f"cannot reach {self.base}: {type(exc).__name__}", EXIT_UNAVAILABLE
            ) from None
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if status == 200 and doc is not None:
            return doc
        problem = doc if isinstance(doc, dict) else {}
        detail = str(problem.get("detail") or problem.get("title") or "no detail")
        if status == 400:
            raise ApiError(_as_options(detail), EXIT_USAGE)
        if status == 401:
            raise ApiError(
                "the admin token was refused (401): check admin.token_file", EXIT_REJECTED
            )
        if status == 503:
            raise ApiError(f"pcns is unavailable (503): {detail}; try again", EXIT_UNAVAILABLE)
        raise ApiError(f"{detail} ({status})", EXIT_REJECTED)


@asynccontextmanager
async def open_api(args: argparse.Namespace, who: str) -> AsyncIterator[AdminApi]:
    """The admin API of the receiver the configuration (or ``--url``) names."""
    settings = load_settings(args.config)
    token = read_private_file(settings.admin.token_file, "admin token")
    base = (args.url or receiver_url(settings)).rstrip("/")
    try:
        context = client_ssl_context(args.ca_file, args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        raise ApiError(
            f"--ca-file, --cert, --key: cannot load ({type(exc).__name__})", EXIT_USAGE
        ) from None
    headers = {"Authorization": f"Bearer {token}", "pcns-actor": who}
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield AdminApi(base, headers, context or True, session)
