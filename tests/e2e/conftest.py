"""Helpers for tests that run `pcns` as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PCNS = [sys.executable, "-m", "pcns"]


@contextmanager
def pcns_process(
    *args: str, cwd: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `pcns ARGS`; on exit SIGTERM it and wait (SIGKILL after 20 s)."""
    out = open(log or (cwd / "pcns.log"), "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*PCNS, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()


def wait_for_text(
    path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"pcns exited with {proc.returncode}:\n{path.read_text(errors='replace')}")
        time.sleep(0.1)
    pytest.fail(f"{text!r} not seen within {timeout}s:\n{path.read_text(errors='replace')}")


def create_hook_key(config: Path, cwd: Path) -> dict[str, str]:
    """`pcns keys hook create`, then `export --format json`: the key id, PEM and hex point."""
    base = {"capture_output": True, "text": True, "cwd": cwd, "check": False, "timeout": 120}
    created = subprocess.run([*PCNS, "keys", "hook", "create", "--config", str(config)], **base)
    assert created.returncode == 0, created.stderr
    exported = subprocess.run(
        [*PCNS, "keys", "hook", "export", "--config", str(config), "--format", "json"], **base
    )
    assert exported.returncode == 0, exported.stderr
    doc: dict[str, str] = json.loads(exported.stdout)
    assert created.stdout.startswith(f"hook key {doc['key_id']} is now current")
    return doc
