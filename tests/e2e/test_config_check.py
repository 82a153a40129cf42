"""`pcns config check` run as an operator runs it: the installed `pcns` executable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ServiceFiles

PCNS_EXECUTABLE = Path(sys.executable).with_name("pcns")  # the console script (.venv/bin/pcns)
SENTINEL = "Sentinel-Secret-e2e-4Kp"


def config_check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PCNS_EXECUTABLE), "config", "check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_config_check_reports_every_problem_then_passes_once_fixed(tmp_path: Path) -> None:
    """`pcns config check` exits 1 listing a bad file's problems one per line under their keys,
    with no traceback and no secret, and exits 0 with a summary once the file is fixed."""
    # A database that nothing listens on: the check must not need it.
    files = ServiceFiles(tmp_path / "svc", f"postgresql://pcns:{SENTINEL}@127.0.0.1:1/pcns")
    files.token_file.chmod(0o644)
    files.targets.append({"name": "typo", "type": "htpasswd", "pathh": "x"})
    files.delivery = {"workers": 0}
    bad = config_check("--config", str(files.write_config("bad.toml")), cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr
    keys = [line.split(": ", 1)[0] for line in bad.stdout.splitlines()]
    assert keys == ["delivery.workers", "admin.token_file", "targets.1 (typo)", "targets.1 (typo)"]
    assert "Traceback" not in bad.stderr
    assert SENTINEL not in bad.stdout + bad.stderr

    files.token_file.chmod(0o600)
    files.targets.pop()
    files.delivery = {}
    good = config_check("--config", str(files.write_config("good.toml")), cwd=tmp_path)
    assert (good.returncode, good.stdout, good.stderr) == (
        0,
        "configuration ok: 1 target, 1 source\n",
        "",
    )
