"""Per-target protection on the real delivery path (the `http` adapter against a small real
aiohttp application): a concurrency cap, and a circuit breaker that holds deliveries while the
application is down without burning their attempts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pcns.app import running_service
from tests.support import Client, ServiceFiles, fetch_all, free_port, wait_terminal


@dataclass
class App:
    """An application endpoint that records passwords, concurrency, and can be taken down."""

    port: int = field(default_factory=free_port)
    down: bool = False
    delay: float = 0.0
    active: int = 0
    peak: int = 0
    calls: int = 0
    stored: dict[str, str] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.down:
            return web.Response(status=503)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            body = await request.json()
            self.stored[body["user"]] = body["password"]
        finally:
            self.active -= 1
        return web.Response(status=204)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    state = App()
    web_app = web.Application()
    web_app.router.add_post("/users/password", state.handle)
    runner = web.AppRunner(web_app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", state.port).start()
    yield state
    await runner.cleanup()


def http_target(app: App, **protection: object) -> dict[str, object]:
    return {
        "name": "hr",
        "type": "http",
        "url": f"http://127.0.0.1:{app.port}/users/password",
        "allow_insecure": True,
        "body": {"user": "{account}", "password": "{password}"},
        **protection,
    }


async def test_concurrency_cap_is_respected(tmp_path: Path, db_url: str, app: App) -> None:
    """With max_concurrency = 2 the application never sees more than two calls at once, and
    every change still arrives."""
    app.delay = 0.2
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[http_target(app, max_concurrency=2)],
        delivery={"workers": 8},
    )
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        client = Client(files, session)
        sent = [await client.send(f"user{i}", f"Pw-{i}") for i in range(10)]
        for _, body in sent:
            assert await wait_terminal(client, body["id"]) == {"hr": "delivered"}
    assert app.peak == 2
    assert app.stored == {f"user{i}": f"Pw-{i}" for i in range(10)}


async def test_breaker_holds_deliveries_without_burning_attempts(
    tmp_path: Path, db_url: str, app: App
) -> None:
    """While the application answers 503 for several cool-downs, the breaker opens after two
    failures; the deliveries wait (failed probes cost no attempt, so max_attempts = 3 is never
    reached) and every one is delivered once the application is back."""
    app.down = True
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[http_target(app, breaker_threshold=2, breaker_cooldown="1s")],
        delivery={
            "workers": 1,
            "backoff_initial": "100ms",
            "backoff_max": "200ms",
            "max_attempts": 3,
        },
    )
    async with running_service(files.settings()) as svc, aiohttp.ClientSession() as session:
        client = Client(files, session)
        sent = [await client.send(f"user{i}", f"Pw-{i}") for i in range(8)]
        await asyncio.sleep(4)  # down for several cool-downs and many backoff steps
        calls_while_down = app.calls
        async with session.get(files.url + "/metrics") as r:
            metrics = await r.text()
        app.down = False
        states = [await wait_terminal(client, body["id"], timeout=30) for _, body in sent]
        assert svc.url
    assert states == [{"hr": "delivered"}] * 8
    assert app.stored == {f"user{i}": f"Pw-{i}" for i in range(8)}
    # Without the breaker, 8 deliveries retrying every ~150 ms for 4 s would have made far
    # more calls and all failed at max_attempts = 3; with it, two failures open it and then
    # one probe per 1 s cool-down knocks, costing no attempt.
    assert calls_while_down <= 2 + 5
    rows = await fetch_all(
        db_url,
        "SELECT max(attempts) AS m FROM pcns_deliveries WHERE change_id = ANY($1::uuid[])",
        [uuid.UUID(b["id"]) for _, b in sent],
    )
    assert rows[0]["m"] <= 2
    assert 'pcns_target_breaker_open{target="hr"} 1.0' in metrics
