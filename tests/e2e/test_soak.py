"""The kill -9 soak's short form (``python -m bench.soak``, issue 12; the documented run makes
200 kills): two receivers and two workers on one queue under a steady signed load, ten of them
SIGKILLed one after another and started again, then the history checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import needs_htpasswd

ROOT = Path(__file__).resolve().parents[2]
KILLS = 10


@needs_htpasswd
@pytest.mark.timeout(150)
def test_ten_sigkills_lose_no_acknowledged_change_and_keep_each_accounts_order(
    tmp_path: Path, pg_server_url: str
) -> None:
    """After 10 SIGKILLs of random receivers and workers under load, every change a receiver
    acknowledged with 202 reached every target (htpasswd, PostgreSQL and, with
    PCNS_TEST_MYSQL_URL, MariaDB) or was superseded by a newer delivered one, and each target
    holds each account's newest acknowledged password (``htpasswd -v``, the stored hashes
    verified) and never wrote an older password after a newer one."""
    summary_file = tmp_path / "soak.json"
    command = [
        sys.executable,
        "-m",
        "bench.soak",
        f"--kills={KILLS}",
        "--interval=2",
        "--accounts=30",
        f"--database-url={pg_server_url}",
        "--settle=20",
        "--drain-timeout=40",
        f"--json={summary_file}",
    ]
    if mysql_url := os.environ.get("PCNS_TEST_MYSQL_URL"):
        command.append(f"--mysql-url={mysql_url}")
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=140, check=False
    )
    assert summary_file.exists(), done.stderr[-4000:]
    summary = json.loads(summary_file.read_text())
    report = done.stdout + done.stderr[-2000:]
    assert (summary["lost"], summary["out_of_order"]) == (0, 0), report
    assert summary["kills"] == KILLS, report
    assert summary["acknowledged"] > 0, report
    assert summary["states"].get("delivered", 0) > 0, report
    assert summary["open_after_drain"] == 0, report
    assert done.returncode == 0, report
