"""`pcns hook samba` and `pcns hook pam` run as real processes, fed exactly as syncpasswords and
pam_exec feed them, against a real `pcns serve`."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PCNS, pcns_process, wait_for_text
from tests.integration.conftest import needs_htpasswd
from tests.support import ServiceFiles, free_port, htpasswd_verifies, toml_value

UNICODE_PASSWORD = "Пароль-密码-🔑-ß-9a"


def hook_config(path: Path, **keys: Any) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()))
    return path


def samba_record(user: str, password: str | None, kvno: int = 2) -> bytes:
    lines = [
        f"dn: CN={user},CN=Users,DC=corp,DC=example",
        "objectGUID: 3a558c04-98c2-4d37-8fea-51dcf2900582",
        "objectSid: S-1-5-21-1490550168-103638359-2310111724-1102",
        f"sAMAccountName: {user}",
        f"pwdLastSet: {134404031903399310 + kvno}",
        f"msDS-KeyVersionNumber: {kvno}",
    ]
    if password is not None:
        lines.append("virtualClearTextUTF8:: " + base64.b64encode(password.encode()).decode())
    return ("\n".join(lines) + "\n\n").encode()


def acknowledged(done: subprocess.CompletedProcess[str]) -> bool:
    """What syncpasswords checks: its reply (stdout and stderr, one pipe) starts with it."""
    return any(line.startswith("DONE-EXIT: ") for line in (done.stdout + done.stderr).splitlines())


@dataclass
class Hook:
    config: Path

    async def run(
        self, kind: str, stdin: bytes, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        done = await asyncio.to_thread(
            subprocess.run,
            [*PCNS, "hook", kind, "--config", str(self.config)],
            input=stdin,
            env={**os.environ, **(env or {})},
            capture_output=True,
            check=False,
            timeout=timeout,
        )
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )


@pytest.fixture
async def served(tmp_path: Path, db_url: str) -> AsyncIterator[ServiceFiles]:
    """`pcns serve` with an htpasswd target, as a subprocess."""
    files = ServiceFiles(tmp_path / "svc", db_url)
    config = files.write_config()
    with pcns_process("serve", "--config", str(config), cwd=files.root) as proc:
        await asyncio.to_thread(wait_for_text, files.root / "pcns.log", "service_started", proc)
        yield files


def hook_for(files: ServiceFiles, tmp_path: Path, **over: Any) -> Hook:
    keys = {
        "url": files.url,
        "source": "dc01",
        "secret_file": files.secret_file,
        "domain": "CORP",
        "timeout": "5s",
        "retry_for": "2s",
        **over,
    }
    return Hook(hook_config(tmp_path / "hook.toml", **keys))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a receiver that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


async def wait_verified(path: Path, user: str, password: str) -> None:
    for _ in range(100):
        if htpasswd_verifies(path, user, password):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{user}'s password never arrived in {path}")


@needs_htpasswd
async def test_samba_hook_delivers_and_a_replay_is_deduped(
    served: ServiceFiles, tmp_path: Path
) -> None:
    """One record -> DONE-EXIT and htpasswd accepts it; the same record again is the same change."""
    hook = hook_for(served, tmp_path)
    first = await hook.run("samba", samba_record("alice", UNICODE_PASSWORD))
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith("DONE-EXIT: sent alice as change ")
    await wait_verified(served.root / "wiki.htpasswd", "alice", UNICODE_PASSWORD)

    again = await hook.run("samba", samba_record("alice", UNICODE_PASSWORD))
    assert again.stdout.splitlines()[0] == first.stdout.splitlines()[0]  # same change id
    for out in (first, again):
        assert UNICODE_PASSWORD not in out.stdout + out.stderr
        assert "hook_change_sent" in out.stderr


async def test_samba_hook_acknowledges_a_record_without_cleartext(tmp_path: Path) -> None:
    """No cleartext: DONE-EXIT without contacting pcns (nothing listens at the URL)."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused")
    hook = hook_for(files, tmp_path, url=f"http://127.0.0.1:{free_port()}")
    done = await hook.run("samba", samba_record("WS01$", None))
    assert done.returncode == 0
    assert done.stdout.startswith("DONE-EXIT: skipped WS01$: no cleartext")
    assert "hook_change_skipped" in done.stderr


async def test_samba_hook_receiver_down_is_not_acknowledged(tmp_path: Path) -> None:
    """pcns unreachable after the retry budget: non-zero exit and no DONE-EXIT anywhere."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused")
    hook = hook_for(files, tmp_path, url=f"http://127.0.0.1:{free_port()}", retry_for="1s")
    done = await hook.run("samba", samba_record("alice", "Sentinel-Pass-42!"))
    assert done.returncode == 3
    assert not acknowledged(done)
    assert "hook_change_not_delivered" in done.stderr
    assert "Sentinel-Pass-42!" not in done.stdout + done.stderr


async def test_samba_hook_wrong_secret_stops(served: ServiceFiles, tmp_path: Path) -> None:
    """A 401 is a misconfigured hook: it stops (no DONE-EXIT) rather than skip the change."""
    other = ServiceFiles(tmp_path / "other", "postgresql://unused")
    hook = hook_for(served, tmp_path, secret_file=other.secret_file)
    done = await hook.run("samba", samba_record("alice", "Pass-w0rd!"))
    assert done.returncode == 1
    assert not acknowledged(done)
    assert "urn:pcns:problem:bad-signature" in done.stderr


async def test_samba_hook_skips_a_record_pcns_can_never_accept(
    served: ServiceFiles, tmp_path: Path
) -> None:
    """A 400 (a password over 1024 characters) is skipped with an error, not retried forever."""
    done = await hook_for(served, tmp_path).run("samba", samba_record("alice", "x" * 1100))
    assert done.returncode == 0
    assert done.stdout.startswith("DONE-EXIT: skipped alice: pcns refused the record (400)")
    assert "hook_change_rejected" in done.stderr


PAM_ENV = {"PAM_TYPE": "password", "PAM_USER": "bob", "PAM_SERVICE": "passwd"}


@needs_htpasswd
async def test_pam_hook_delivers(served: ServiceFiles, tmp_path: Path) -> None:
    """As pam_exec runs it (token + NUL on stdin, PAM_USER): exit 0, htpasswd accepts it."""
    hook = hook_for(served, tmp_path)
    done = await hook.run("pam", UNICODE_PASSWORD.encode() + b"\0", PAM_ENV)
    assert done.returncode == 0, done.stderr
    assert "delivered to pcns as change" in done.stderr
    await wait_verified(served.root / "wiki.htpasswd", "bob", UNICODE_PASSWORD)
    assert UNICODE_PASSWORD not in done.stdout + done.stderr


async def test_pam_hook_ignores_other_stacks(tmp_path: Path) -> None:
    """PAM_TYPE=auth: nothing to send, exit 0 silently."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused")
    hook = hook_for(files, tmp_path, url=f"http://127.0.0.1:{free_port()}")
    done = await hook.run("pam", b"Pass-w0rd!\0", {**PAM_ENV, "PAM_TYPE": "auth"})
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize("receiver", ["refused", "hangs"])
async def test_pam_hook_fails_open_when_receiver_is_down(
    tmp_path: Path, silent_port: int, receiver: str
) -> None:
    """Receiver refusing or hanging: the hook still exits 0 within its budget, says the change
    was not delivered, and never shows the password."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused")
    port = silent_port if receiver == "hangs" else free_port()
    hook = hook_for(files, tmp_path, url=f"http://127.0.0.1:{port}", timeout="1s")
    # The subprocess timeout is only a hang detector: the hook's budget is 1 s.
    done = await hook.run("pam", b"Sentinel-Pass-42!\0", PAM_ENV, timeout=20)
    assert done.returncode == 0
    assert "password change of bob NOT delivered" in done.stderr
    assert "Sentinel-Pass-42!" not in done.stdout + done.stderr
