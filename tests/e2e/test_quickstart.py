"""The README's first command on a machine with no database running: `pcns serve --init` with
the quickstart config starts an embedded PostgreSQL; `pcns notify` is accepted and within 2 s
`htpasswd -v` verifies the new password."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import PCNS, pcns_process, wait_for_text
from tests.integration.conftest import needs_htpasswd
from tests.support import free_port, htpasswd_verifies

QUICKSTART = Path(__file__).parents[2] / "deploy" / "examples" / "quickstart.toml"


@needs_htpasswd
def test_quickstart_serves_on_embedded_postgres(tmp_path: Path) -> None:
    """Fresh directory, embedded database: notify succeeds and htpasswd accepts within 2 s."""
    (tmp_path / "deploy" / "examples").mkdir(parents=True)
    config = tmp_path / "deploy" / "examples" / "quickstart.toml"
    shutil.copy(QUICKSTART, config)
    # Only the port differs from the README's run, so parallel runs cannot collide.
    env = {"PCNS_SERVER__LISTEN": f"127.0.0.1:{free_port()}"}
    rel = "deploy/examples/quickstart.toml"
    with pcns_process("serve", "--config", rel, "--init", cwd=tmp_path, env=env) as proc:
        wait_for_text(tmp_path / "pcns.log", "Send a test change", proc, timeout=90)
        assert (tmp_path / "pcns-data" / "postgres").is_dir()
        sent = subprocess.run(
            [*PCNS, "notify", "--config", rel, "--source", "dc01", "--user", "alice"],
            input=b"N3w-Passw0rd!",
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            check=False,
            timeout=60,
        )
        accepted_at = time.monotonic()
        assert sent.returncode == 0, sent.stderr.decode()
        htpasswd = tmp_path / "pcns-data" / "wiki.htpasswd"
        while not htpasswd_verifies(htpasswd, "alice", "N3w-Passw0rd!"):
            assert time.monotonic() - accepted_at < 2.0, "not delivered within 2 s"
            time.sleep(0.05)
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    log = (tmp_path / "pcns.log").read_text()
    assert "embedded_postgres_stopped" in log
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"event": "delivery_attempt", "outcome": "delivered"}.items() <= next(
        e for e in events if e["event"] == "delivery_attempt"
    ).items()
