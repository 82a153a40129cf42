"""A real Samba AD DC in a temporary directory runs `samba-tool user syncpasswords` with
`pcns hook samba` as its script; password changes made with `samba-tool user setpassword` reach
an htpasswd target through a real `pcns serve`, including one made while pcns was down."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import create_hook_key, pcns_process, wait_for_text
from tests.integration.conftest import needs_htpasswd
from tests.support import ServiceFiles, htpasswd_verifies, toml_value

SAMBA_TOOL = shutil.which("samba-tool")
SAMBA = shutil.which("samba") or ("/usr/sbin/samba" if Path("/usr/sbin/samba").exists() else None)
GPG = shutil.which("gpg")
ATTRIBUTES = (
    "sAMAccountName,objectSid,userPrincipalName,pwdLastSet,msDS-KeyVersionNumber,"
    "virtualClearTextUTF8"
)
FIRST = "First-Pass-1a!"
SENTINEL = "Sentinel-While-Down-7q!"  # set while pcns is down: must never touch the DC's disk
UNICODE = "Пароль-密码-🔑-ß-Aa1"


def _require_samba() -> None:
    missing = [n for n, p in (("samba-tool", SAMBA_TOOL), ("samba", SAMBA), ("gpg", GPG)) if not p]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed (Debian samba, samba-ad-dc, gnupg, python3-gpg)"
    if os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
        pytest.fail(f"PCNS_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)


class SambaDC:
    """One provisioned domain in ``root``: its GPG home, smb.conf and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gnupg = root / "gnupg"
        self.dc = root / "dc"
        self.conf = self.dc / "etc" / "smb.conf"
        self.ldapi = f"ldapi://{self.dc}/private/ldap_priv/ldapi"
        self.env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        self.log = root / "samba-tool.log"

    def tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SAMBA_TOOL), *args, "-s", str(self.conf)],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and done.returncode != 0:
            pytest.fail(f"samba-tool {args[:2]} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def gpg_key(self) -> str:
        """A key without passphrase, as samba encrypts every new password to it."""
        self.gnupg.mkdir(mode=0o700)
        params = self.root / "key.params"
        params.write_text(
            "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nName-Real: pcns test DC\n"
            "Name-Email: dc@corp.example\nExpire-Date: 0\n%commit\n"
        )
        gpg = [str(GPG), "--batch"]
        subprocess.run(
            [*gpg, "--gen-key", str(params)],
            env=self.env,
            check=True,
            timeout=60,
            capture_output=True,
        )
        listing = subprocess.run(
            [*gpg, "--with-colons", "--list-keys"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))

    def provision(self, fingerprint: str) -> None:
        done = subprocess.run(
            [str(SAMBA_TOOL), "domain", "provision", "--realm=CORP.EXAMPLE", "--domain=CORP",
             "--server-role=dc", "--dns-backend=NONE", "--adminpass=Adm1nPass!x",
             f"--targetdir={self.dc}",
             f"--option=password hash gpg key ids = {fingerprint}",
             "--option=interfaces = lo", "--option=bind interfaces only = yes"],
            env=self.env, capture_output=True, text=True, check=False, timeout=180,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"provision failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    @contextmanager
    def running(self) -> Iterator[None]:
        """`samba -i` in its own process group, stopped with the whole group."""
        with open(self.root / "samba.log", "ab") as out:
            proc = subprocess.Popen(
                [str(SAMBA), "-i", "-s", str(self.conf)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 90
                while self.tool("user", "list", "-H", self.ldapi, check=False).returncode != 0:
                    assert proc.poll() is None, (self.root / "samba.log").read_text()
                    assert time.monotonic() < deadline, "samba did not come up"
                    time.sleep(0.5)
                yield
            finally:
                _stop_group(proc)

    @contextmanager
    def syncpasswords(self) -> Iterator[subprocess.Popen[bytes]]:
        """The sync loop, as the systemd unit runs it (no --daemon)."""
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                [str(SAMBA_TOOL), "user", "syncpasswords", "-s", str(self.conf)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                yield proc
            finally:
                _stop_group(proc)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, check=False, timeout=30)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_verified(path: Path, user: str, password: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not htpasswd_verifies(path, user, password):
        assert time.monotonic() < deadline, f"{what}: not at the target within {timeout}s"
        time.sleep(0.2)


def _files_holding(root: Path, secrets: list[str]) -> list[str]:
    """Every file under ``root`` that holds one of ``secrets`` in UTF-8 or UTF-16-LE."""
    needles = [s.encode(enc) for s in secrets for enc in ("utf-8", "utf-16-le")]
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            hits += [f"{path}" for n in needles if n in data]
    return hits


def _scenario(dc: SambaDC, files: ServiceFiles) -> None:
    dc.provision(dc.gpg_key())
    hook_dir = dc.root / "hook"
    hook_dir.mkdir()
    hook_toml = hook_dir / "hook.toml"
    config = files.write_config()
    # The hook seals every password to a pcns hook key; the source refuses anything else.
    hook_key = create_hook_key(config, files.root)
    key_file = hook_dir / "hook-key.pem"
    key_file.write_text(hook_key["public_key_pem"])
    settings = {"url": files.url, "source": "dc01", "secret_file": files.secret_file,
                "domain": "CORP", "timeout": "5s", "retry_for": "2s",
                "recipient_key_id": hook_key["key_id"], "recipient_key_file": key_file}  # fmt: skip
    hook_toml.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    # syncpasswords runs its --script as one path without arguments: a wrapper carries them.
    venv_pcns = Path(sys.executable).parent / "pcns"
    command = f'"{venv_pcns}"' if venv_pcns.exists() else f'"{sys.executable}" -m pcns'
    wrapper = hook_dir / "pcns-samba-hook"
    wrapper.write_text(f'#!/bin/sh\nexec {command} hook samba --config "{hook_toml}"\n')
    wrapper.chmod(0o700)
    htpasswd = files.root / "wiki.htpasswd"

    with dc.running():
        dc.tool("user", "create", "alice", "Init1alPass!", "-H", dc.ldapi)
        dc.tool("user", "syncpasswords", "--cache-ldb-initialize", f"--attributes={ATTRIBUTES}",
                "--decrypt-samba-gpg", f"--script={wrapper}", "-H", dc.ldapi)  # fmt: skip

        with pcns_process("serve", "--config", str(config), cwd=files.root) as pcns:
            wait_for_text(files.root / "pcns.log", "service_started", pcns)
            with dc.syncpasswords() as sync:
                _wait_verified(htpasswd, "alice", "Init1alPass!", "initial sync")
                dc.tool("user", "setpassword", "alice", f"--newpassword={FIRST}")
                _wait_verified(htpasswd, "alice", FIRST, "first change")
                assert sync.poll() is None, dc.log.read_text()
            pcns.terminate()
            assert pcns.wait(timeout=30) == 0

            # pcns is down: the hook must not acknowledge, so syncpasswords stops.
            with dc.syncpasswords() as sync:
                dc.tool("user", "setpassword", "alice", f"--newpassword={SENTINEL}")
                try:
                    code = sync.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"syncpasswords kept running:\n{dc.log.read_text()[-4000:]}")
            assert code != 0
            assert "hook_change_not_delivered" in dc.log.read_text()

        second_log = files.root / "pcns-2.log"
        with pcns_process("serve", "--config", str(config), cwd=files.root, log=second_log) as p:
            wait_for_text(second_log, "service_started", p)
            with dc.syncpasswords() as sync:  # what systemd's Restart=always does
                _wait_verified(htpasswd, "alice", SENTINEL, "change made while pcns was down")
                dc.tool("user", "setpassword", "alice", f"--newpassword={UNICODE}")
                _wait_verified(htpasswd, "alice", UNICODE, "Unicode password")
                assert sync.poll() is None, dc.log.read_text()

    # The change made while pcns was down was replayed under the webhook-id of the failed try.
    log = dc.log.read_text()
    failed = re.search(r'"webhook_id":"(pcns_\w+)"[^\n]*"event":"hook_change_not_delivered"', log)
    assert failed is not None, log
    assert f'"webhook_id":"{failed[1]}","change_id"' in log[failed.end() :]
    assert "DONE-EXIT: skipped Guest: no cleartext" in log

    # Nothing on the DC side holds a password in clear: not the hook's files, not the
    # syncpasswords cache (it keeps only dirsync cookies), logs or the directory's own files.
    cache = dc.dc / "private" / "user-syncpasswords-cache.ldb"
    assert b"virtualClearTextUTF8" in cache.read_bytes()  # the cache this test means
    used = [FIRST, SENTINEL, UNICODE]
    assert _files_holding(dc.root, used) == []
    assert _files_holding(files.root, used) == []  # pcns' logs and the bcrypt target neither


@needs_htpasswd
@pytest.mark.timeout(300)
async def test_samba_dc_password_changes_reach_htpasswd(tmp_path: Path, db_url: str) -> None:
    """setpassword on a real DC reaches htpasswd, sealed by the hook to a pcns hook key (the
    source requires it); a change made while pcns is down arrives after the restart; a Unicode
    password arrives intact; no cleartext is left on the DC's disk."""
    _require_samba()
    # Short paths: the DC's ldapi and gpg-agent sockets must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="pcns-dc-"))
    dc = SambaDC(root)
    files = ServiceFiles(tmp_path / "svc", db_url, source={"require_sealed": True})
    try:
        await asyncio.to_thread(_scenario, dc, files)
    finally:
        dc.close()
        shutil.rmtree(root, ignore_errors=True)
