"""Helpers for tests that run the service: config files on disk, a signing client, a TCP proxy
that can cut the service off from PostgreSQL (a real outage, as a network partition looks)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pgserver  # type: ignore[import-untyped]
import tomli_w
from standardwebhooks.webhooks import Webhook

from pcns.config import Settings
from pcns.receiver.signature import sign
from pcns.secret_files import (
    decode_webhook_secret,
    new_admin_token,
    new_webhook_secret,
    write_private_file,
)
from tests.faultproxy import FaultProxy, Upstream
from vault import FileKek, HookPublicKey, create_keyring_file, seal_for_hook

HTPASSWD = shutil.which("htpasswd")
# pgserver's own pg_dump: as new as the embedded server, and able to dump an older one.
PG_DUMP = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _toml_ready(value: Any) -> Any:
    """``value`` with every path as a string, the one type of ours that tomli-w does not take."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _toml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_toml_ready(v) for v in value]
    return value


def toml_value(value: Any) -> str:
    """One TOML value (a scalar or an array of them), for a ``key = value`` line."""
    line = tomli_w.dumps({"v": _toml_ready(value)})
    if not line.startswith("v = "):
        raise TypeError(type(value))
    return line.removeprefix("v = ").rstrip("\n")


def to_toml(doc: dict[str, Any]) -> str:
    """``doc`` as a TOML document (tomli-w); paths are written as strings."""
    return tomli_w.dumps(_toml_ready(doc))


@dataclass
class ServiceFiles:
    """A service's key, secrets and config on disk, for in-process or subprocess runs."""

    root: Path
    db_url: str
    port: int = field(default_factory=free_port)
    targets: list[dict[str, Any]] = field(default_factory=list)
    delivery: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    vault: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # more keys of the dc01 source

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.keyring = self.root / "keyring.json"
        if not self.keyring.exists():
            create_keyring_file(self.keyring)
        self.secret_file = self.root / "dc01.whsec"
        write_private_file(self.secret_file, new_webhook_secret())
        self.secret = self.secret_file.read_text().strip()
        self.token_file = self.root / "admin.token"
        write_private_file(self.token_file, new_admin_token())
        self.admin_token = self.token_file.read_text().strip()
        if not self.targets:
            self.targets = [
                htpasswd_target("wiki", self.root / "wiki.htpasswd", exclude=["krbtgt", "svc_*"])
            ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def document(self) -> dict[str, Any]:
        return {
            "server": {"listen": f"127.0.0.1:{self.port}", **self.server},
            "database": {"url": self.db_url, "pool_size": 6},
            "vault": {"keyring": self.keyring, **self.vault},
            "admin": {"token_file": self.token_file},
            "delivery": {"poll_interval": "200ms", **self.delivery},
            "sources": [{"id": "dc01", "secret_file": self.secret_file, **self.source}],
            "targets": self.targets,
        }

    def settings(self) -> Settings:
        return Settings(**json.loads(json.dumps(self.document(), default=str)))

    def write_config(self, name: str = "pcns.toml", **changes: Any) -> Path:
        doc = self.document()
        doc.update(changes)
        path = self.root / name
        path.write_text(to_toml(doc))
        return path


def write_secret(path: Path, text: str) -> Path:
    """Write (or rewrite) a credential file the way an operator must: mode 0600."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def htpasswd_target(name: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "htpasswd", "path": path, "bcrypt_cost": 4, **extra}


def htpasswd_verifies(path: Path, user: str, password: str) -> bool:
    """Apache's own ``htpasswd -v``: exit 0 when ``password`` is ``user``'s password."""
    assert HTPASSWD is not None
    if not path.exists():
        return False
    done = subprocess.run(
        [HTPASSWD, "-v", "-i", str(path), user],
        input=password.encode(),
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


class Client:
    """Signs requests with the ``standardwebhooks`` package, as an independent hook would."""

    def __init__(self, files: ServiceFiles, session: aiohttp.ClientSession) -> None:
        self.files = files
        self.session = session

    def signed_headers(
        self,
        body: bytes,
        *,
        webhook_id: str | None = None,
        at: datetime | None = None,
        secret: str | None = None,
    ) -> dict[str, str]:
        wid = webhook_id or f"msg_{uuid.uuid4().hex}"
        ts = at or datetime.now(UTC)
        whsec = secret or self.files.secret
        try:
            signature = Webhook(whsec).sign(wid, ts, body.decode())
        except UnicodeDecodeError:  # the reference library signs text only
            key = decode_webhook_secret(whsec, what="secret")
            signature = sign(key, wid, int(ts.timestamp()), body)
        return {
            "content-type": "application/json",
            "webhook-id": wid,
            "webhook-timestamp": str(int(ts.timestamp())),
            "webhook-signature": signature,
            "pcns-source": "dc01",
        }

    async def post_raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any, str]:
        async with self.session.post(
            self.files.url + "/v1/password-changes", data=body, headers=headers
        ) as resp:
            text = await resp.text()
            ctype = resp.headers.get("content-type", "")
            parsed = json.loads(text) if "json" in ctype else None
            return resp.status, parsed, text

    async def send(
        self, user: str, password: str, *, webhook_id: str | None = None, **fields: Any
    ) -> tuple[int, Any]:
        body = json.dumps({"user": user, "password": password, **fields}).encode()
        status, parsed, _ = await self.post_raw(
            body, self.signed_headers(body, webhook_id=webhook_id)
        )
        return status, parsed

    async def status(self, change_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.files.url}/v1/password-changes/{change_id}",
            headers={"Authorization": f"Bearer {self.files.admin_token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body


async def admin_call(
    client: Client,
    method: str,
    path: str,
    body: Any = None,
    *,
    actor: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One call of the admin API with the admin token; (status, parsed JSON body)."""
    headers = {"Authorization": f"Bearer {client.files.admin_token}"}
    if actor is not None:
        headers["pcns-actor"] = actor
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        headers["content-type"] = "application/json"
    async with client.session.request(
        method, client.files.url + path, data=data, headers=headers
    ) as resp:
        text = await resp.text()
        parsed = json.loads(text) if "json" in resp.headers.get("content-type", "") else text
        return resp.status, parsed


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 20.0, interval: float = 0.1
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


async def delivery_states(client: Client, change_id: str) -> dict[str, str]:
    doc = await client.status(change_id)
    return {d["target"]: d["state"] for d in doc["deliveries"]}


async def wait_terminal(client: Client, change_id: str, timeout: float = 20.0) -> dict[str, str]:
    async def probe() -> dict[str, str] | None:
        states = await delivery_states(client, change_id)
        return states if all(s not in ("pending", "in_flight") for s in states.values()) else None

    result: dict[str, str] = await eventually(probe, timeout=timeout)
    return result


class PgProxy(FaultProxy):
    """A TCP proxy in front of PostgreSQL that a test can cut (refuse and drop every connection)
    and restore; the service sees exactly what a database outage looks like on the wire."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        query = parse_qs(parts.query)
        upstream: Upstream = (
            query["host"][0] + "/.s.PGSQL.5432"
            if "host" in query
            else (parts.hostname or "127.0.0.1", parts.port or 5432)
        )
        super().__init__(upstream)
        self._db = parts.path.lstrip("/")
        self._user = parts.username or "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{self._db}"

    @property
    def up(self) -> bool:
        return self.mode != "reset"

    def cut(self) -> None:
        """Reset every open connection now and every new one until :meth:`restore`."""
        self.reset()
        self.abort_all()

    def restore(self) -> None:
        self.passthrough()


async def fetch_all(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


async def hook_key_op(files: ServiceFiles, op: str, key_id: str | None = None) -> HookPublicKey:
    """Run a hook-key operation (create, rotate, retire) as `pcns keys hook` does, against the
    service's database; returns the key's public half (empty point for retire)."""
    from pcns.database import create_pool
    from pcns.keys import hook_admin
    from pcns.queue.key_store import KeyStore

    async with create_pool(files.db_url, size=2, wait=5) as db:
        store = KeyStore(db)
        if op == "retire":
            assert key_id is not None
            await hook_admin.retire(store, actor="test", key_id=key_id)
            return HookPublicKey(key_id, b"")
        kek = FileKek(files.keyring)
        kid = await hook_admin.create(store, kek, actor="test", rotate=op == "rotate")
        return await hook_admin.public_key(store, kid)


def sealed_body(
    key: HookPublicKey,
    password: str,
    *,
    webhook_id: str,
    user: str = "alice",
    source: str = "dc01",
    sealed_user: str | None = None,
    **fields: Any,
) -> bytes:
    """A change body whose password is sealed to ``key`` for (source, webhook_id, user)."""
    ct = seal_for_hook(
        key, password, source=source, webhook_id=webhook_id, user=sealed_user or user
    )
    sealed = {"key_id": key.key_id, "ciphertext": base64.b64encode(ct).decode()}
    return json.dumps({"user": user, "sealed": sealed, **fields}).encode()
