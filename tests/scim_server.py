"""The real ``scim2-server`` (PyPI) as a subprocess, for the ``scim`` target's tests.

The server keeps users in memory and never returns a password (``returned: never``), so the
proof of what it stored is its ``--dump-resources`` file, which it writes when it stops on
SIGINT. A process started by ``subprocess.Popen`` receives SIGINT normally (one started with
``&`` from a non-interactive shell would ignore it).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
TEST_TOKEN = "scim-test-token"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS's pick, released again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ScimServer:
    """One ``scim2-server`` process on 127.0.0.1 with a bearer token, started and stopped by us."""

    def __init__(self, workdir: Path, token: str = TEST_TOKEN) -> None:
        self.workdir = workdir
        self.token = token
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v2"
        self.dump_path = workdir / "scim-resources.json"
        self.log_path = workdir / "scim-server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._dump: list[dict[str, Any]] | None = None

    def start(self) -> None:
        """Run the server and wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "scim2_server.testserver.cli",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--bearer-token",
            self.token,
            "--dump-resources",
            str(self.dump_path),
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"scim2-server exited early: {self.log_path.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"scim2-server did not listen within {START_TIMEOUT} s")

    def stop(self) -> list[dict[str, Any]]:
        """Stop the server with SIGINT and return the resources it dumped (idempotent)."""
        if self._process is not None:
            process, self._process = self._process, None
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    raise RuntimeError("scim2-server ignored SIGINT") from None
            if self.dump_path.exists() and self.dump_path.stat().st_size:
                self._dump = json.loads(self.dump_path.read_text(encoding="utf-8"))
        return self._dump or []

    def stored_user(self, user_id: str) -> dict[str, Any]:
        """The stopped server's stored representation of one user, password included."""
        for resource in self.stop():
            if resource.get("id") == user_id:
                return resource
        raise KeyError(user_id)

    async def create_user(
        self, session: aiohttp.ClientSession, user_name: str, *, external_id: str | None = None
    ) -> str:
        """POST /Users (with the right token) and return the new user's id."""
        body: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": user_name}
        if external_id is not None:
            body["externalId"] = external_id
        async with session.post(
            f"{self.base_url}/Users",
            data=json.dumps(body),
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/scim+json",
            },
        ) as response:
            payload = await response.json(content_type=None)
            assert response.status == 201, payload
        user_id: str = payload["id"]
        return user_id


@contextlib.contextmanager
def running_scim_server(workdir: Path, token: str = TEST_TOKEN) -> Iterator[ScimServer]:
    """A started :class:`ScimServer`, stopped on exit however the block ends."""
    server = ScimServer(workdir, token)
    server.start()
    try:
        yield server
    finally:
        server.stop()
