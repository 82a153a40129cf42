"""`pcns-sender.exe` under Wine 10 against a real `pcns serve` on loopback: changes captured by
the filter DLL (through harness.exe) or spool records written here in the README format are
delivered signed and sealed, in order, exactly once; bad records, refusals and outages are
handled as windows/README.md and docs/hooks.md say."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pgserver  # type: ignore[import-untyped]
import pytest

from tests.e2e.conftest import PCNS, create_hook_key, pcns_process, wait_for_text
from tests.integration.conftest import needs_htpasswd
from tests.support import Client, ServiceFiles, fetch_all, free_port, htpasswd_verifies
from tests.windows.conftest import PCNS_SENDER_KEY, Wine, WineProcess, WineResult
from vault.hook_seal import HookPublicKey, seal_for_hook

UNICODE_PASSWORD = "Пароль-密码-🔑-ß-9a"
FILETIME_UNIX_EPOCH = 116444736000000000
SPOOL_VERSION = 1


PG_DUMP = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"


def sentinel_forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, secret.encode("utf-16-le"), base64.b64encode(raw), raw.hex().encode()]


def filetime(unix_seconds: float) -> int:
    return int(unix_seconds * 10_000_000) + FILETIME_UNIX_EPOCH


def spool_record(
    *,
    rid: int,
    changed_at: int,
    webhook_id: str,
    source: str,
    user: str,
    key_id: str,
    sealed: bytes,
) -> bytes:
    """One spool record exactly as windows/README.md lays it out (version 1)."""
    out = b"PCNSSPL\0" + struct.pack("<HHIQ", SPOOL_VERSION, 0, rid, changed_at)
    for part in (webhook_id.encode(), source.encode(), user.encode(), key_id.encode(), sealed):
        out += struct.pack("<I", len(part)) + part
    return out + hashlib.sha256(out).digest()


def pcns_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PCNS, *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=120
    )


@dataclass
class Pcns:
    """A pcns service's files (source dc01, a hook key) that tests start and stop at will."""

    files: ServiceFiles
    config: Path
    key: HookPublicKey
    key_hex: Path
    key_pem: Path

    @contextmanager
    def serving(self) -> Iterator[None]:
        with pcns_process("serve", "--config", str(self.config), cwd=self.files.root) as proc:
            wait_for_text(self.files.root / "pcns.log", "service_started", proc)
            yield

    async def received(self) -> list[str]:
        """The webhook ids of source dc01's changes, in the order pcns committed them."""
        conn = await asyncpg.connect(self.files.db_url)
        try:
            rows = await conn.fetch(
                "SELECT webhook_id FROM pcns_changes WHERE source = 'dc01' ORDER BY received_at, id"
            )
        finally:
            await conn.close()
        return [r["webhook_id"] for r in rows]


@pytest.fixture
def pcns(tmp_path: Path, db_url: str) -> Pcns:
    files = ServiceFiles(tmp_path / "svc", db_url)
    config = files.write_config()
    doc = create_hook_key(config, files.root)
    key_hex, key_pem = files.root / "hook.hex", files.root / "hook.pem"
    key_hex.write_text(doc["public_point_hex"] + "\n")
    key_pem.write_text(doc["public_key_pem"])
    key = HookPublicKey(doc["key_id"], bytes.fromhex(doc["public_point_hex"]))
    return Pcns(files, config, key, key_hex, key_pem)


@dataclass
class Sender:
    """pcns-sender.exe in the session's Wine prefix, with a spool directory of this test."""

    wine: Wine
    build: Path
    pcns: Pcns
    spool: Path
    counter: int = 0
    spooled: list[str] = field(default_factory=list)  # webhook ids, in spool order

    @property
    def exe(self) -> str:
        return str(self.build / "pcns-sender.exe")

    def sender(self, *args: str, timeout: float = 120) -> WineResult:
        return self.wine.run([self.exe, *args], timeout=timeout)

    def configure(
        self, *extra: str, url: str | None = None, secret: Path | None = None
    ) -> WineResult:
        return self.sender(
            "configure",
            "--url",
            url or self.pcns.files.url,
            "--source",
            "dc01",
            "--secret-file",
            self.wine.to_windows_path(secret or self.pcns.files.secret_file),
            "--recipient-key-id",
            self.pcns.key.key_id,
            "--recipient-key-file",
            self.wine.to_windows_path(self.pcns.key_hex),
            "--domain",
            "CORP",
            "--domain-sid",
            "S-1-5-21-1490550168-103638359-2310111724",
            "--spool",
            self.wine.to_windows_path(self.spool),
            "--timeout-ms",
            "5000",
            *extra,
        )

    def run_once(self) -> WineResult:
        return self.sender("run", "--once", "--stats")

    def status(self) -> dict[str, str]:
        done = self.sender("status")
        lines = (line.partition(": ") for line in done.stdout.splitlines())
        return {k: v for k, _, v in lines}

    def records(self) -> list[Path]:
        return sorted(self.spool.glob("*.pcs"))

    def bad(self) -> list[Path]:
        return sorted((self.spool / "bad").glob("*.pcs"))

    def write(
        self,
        user: str,
        password: str,
        *,
        at: float | None = None,
        key: HookPublicKey | None = None,
        source: str = "dc01",
    ) -> Path:
        """A change as the filter spools it, sealed here to the hook key."""
        key = key or self.pcns.key
        webhook_id = "pcns_" + secrets.token_hex(16)
        changed_at = filetime(at if at is not None else time.time()) + self.counter
        sealed = seal_for_hook(key, password, source=source, webhook_id=webhook_id, user=user)
        record = spool_record(
            rid=1100 + self.counter,
            changed_at=changed_at,
            webhook_id=webhook_id,
            source=source,
            user=user,
            key_id=key.key_id,
            sealed=sealed,
        )
        name = f"{changed_at:016x}-{self.counter:08x}-{secrets.randbits(32):08x}.pcs"
        self.counter += 1
        path = self.spool / name
        tmp = path.with_suffix(".pcs.tmp")
        tmp.write_bytes(record)
        tmp.rename(path)
        self.spooled.append(webhook_id)
        return path

    def filter_change(self, user: str, password: str) -> WineResult:
        """One password change through pcnsflt.dll, called by harness.exe as LSASS calls it."""
        pw = self.spool.parent / f"pw-{secrets.token_hex(4)}.txt"
        pw.write_text(password, encoding="utf-8")
        try:
            return self.wine.run(
                [
                    str(self.build / "tests" / "harness.exe"),
                    self.wine.to_windows_path(self.build / "pcnsflt.dll"),
                    "--user",
                    user,
                    "--password-file",
                    self.wine.to_windows_path(pw),
                ],
                timeout=120,
            )
        finally:
            pw.unlink()


@pytest.fixture
def sender(wine: Wine, windows_build: Path, pcns: Pcns, tmp_path: Path) -> Sender:
    wine.reg_delete(PCNS_SENDER_KEY)
    spool = tmp_path / "spool"
    s = Sender(wine, windows_build, pcns, spool)
    done = s.configure()
    assert done.returncode == 0, done.stderr
    assert spool.is_dir()
    return s


def stats(done: WineResult) -> dict[str, int]:
    out = {}
    for line in done.stdout.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


async def wait_verified(path: Path, user: str, password: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if htpasswd_verifies(path, user, password):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user}'s password never arrived in {path}")


async def drained(sender: Sender, timeout: float) -> bool:
    """True once the spool is empty, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sender.records():
            return True
        await asyncio.sleep(0.2)
    return False


def events(done: WineResult | str, event_id: int) -> list[str]:
    text = done if isinstance(done, str) else done.stderr
    return [line for line in text.splitlines() if f"event {event_id} " in line]


# ---------------------------------------------------------------------------------------------


@needs_htpasswd
@pytest.mark.timeout(300)
async def test_filter_change_is_delivered_by_run_once(sender: Sender, pcns: Pcns) -> None:
    """A change captured by the filter DLL under Wine is delivered by `run --once`, opened by
    pcns and written to the htpasswd target, and the spool record is gone afterwards; the
    password is in no form in the spool, pcns' log, its metrics, the status API, the sender's
    output or a pg_dump of the queue."""
    captured = sender.filter_change("alice", UNICODE_PASSWORD)
    assert captured.returncode == 0, captured.stdout + captured.stderr
    assert len(sender.records()) == 1
    spooled = sender.records()[0].read_bytes()
    with pcns.serving():
        done = sender.run_once()
        assert done.returncode == 0, done.stderr
        assert stats(done)["delivered"] == 1
        await wait_verified(pcns.files.root / "wiki.htpasswd", "alice", UNICODE_PASSWORD)
        async with aiohttp.ClientSession() as session:
            client = Client(pcns.files, session)
            async with session.get(pcns.files.url + "/metrics") as resp:
                metrics = await resp.text()
            assert f'pcns_sealed_changes_opened_total{{key_id="{pcns.key.key_id}"}} 1.0' in metrics
            (change_id,) = [
                r["id"]
                for r in await fetch_all(pcns.files.db_url, "SELECT id::text FROM pcns_changes")
            ]
            status = json.dumps(await client.status(change_id))
    assert sender.records() == []
    dump = (
        await asyncio.to_thread(
            subprocess.run,
            [str(PG_DUMP), "--data-only", "--dbname", pcns.files.db_url],
            capture_output=True,
            check=True,
        )
    ).stdout
    log = (pcns.files.root / "pcns.log").read_bytes()
    haystacks = [spooled, log, metrics.encode(), status.encode(), dump]
    haystacks += [out.encode() for out in (done.stdout, done.stderr, captured.stdout)]
    for form in sentinel_forms(UNICODE_PASSWORD):
        for hay in haystacks:
            assert form not in hay


@needs_htpasswd
@pytest.mark.timeout(600)
async def test_outage_keeps_everything_then_delivers_once_in_order(
    sender: Sender, pcns: Pcns
) -> None:
    """With pcns down, `run --once` reports the failure (event 3005, exit 1) and keeps every
    record; the console loop retries with backoff and, once pcns is up, delivers each change
    exactly once in spool order."""
    users = [f"user{i}" for i in range(6)]
    for i, user in enumerate(users):
        sender.write(user, f"Pw-{i}-{UNICODE_PASSWORD}")
    down = sender.run_once()
    assert down.returncode == 1
    assert events(down, 3005), down.stderr
    assert len(sender.records()) == len(users)
    assert sender.status()["depth"] == str(len(users))

    loop: WineProcess = sender.wine.start([sender.exe, "run"])
    try:
        await asyncio.sleep(4)  # a few failed tries while pcns is still down
        assert loop.alive(), loop.stderr_text()
        assert len(sender.records()) == len(users)
        with pcns.serving():
            assert await drained(sender, 120), loop.stderr_text()
            for i, user in enumerate(users):
                await wait_verified(
                    pcns.files.root / "wiki.htpasswd", user, f"Pw-{i}-{UNICODE_PASSWORD}"
                )
            assert await pcns.received() == sender.spooled
    finally:
        loop.stop()
    assert len(events(loop.stderr_text(), 3005)) <= 2, "3005 is not reported per try"


@pytest.mark.timeout(300)
async def test_corrupt_records_are_set_aside_and_the_rest_goes(sender: Sender, pcns: Pcns) -> None:
    """A truncated record and one with a wrong checksum are moved to bad\\ with event 3002, and
    the records before and after them are still delivered."""
    first = sender.write("alice", "Pw-a-1!")
    truncated = sender.write("bob", "Pw-b-1!")
    truncated.write_bytes(truncated.read_bytes()[:40])
    flipped = sender.write("carol", "Pw-c-1!")
    data = bytearray(flipped.read_bytes())
    data[30] ^= 0x01
    flipped.write_bytes(bytes(data))
    last = sender.write("dave", "Pw-d-1!")
    with pcns.serving():
        done = sender.run_once()
        assert done.returncode == 0, done.stderr
        received = await pcns.received()
    assert stats(done)["delivered"] == 2
    assert [p.name for p in sender.bad()] == sorted([truncated.name, flipped.name])
    assert len(events(done, 3002)) == 2
    assert received == [sender.spooled[0], sender.spooled[3]]
    assert not first.exists()
    assert not last.exists()


def leave_as_temp(record: Path, age: float, data: bytes | None = None) -> Path:
    """Turn a spooled record back into the filter's temp file (as a crash between its flush and
    its rename leaves it), ``data`` instead of the record's bytes, last written ``age`` s ago."""
    tmp = record.with_suffix(".pcs.tmp")
    record.rename(tmp)
    if data is not None:
        tmp.write_bytes(data)
    then = time.time() - age
    os.utime(tmp, (then, then))
    return tmp


@pytest.mark.timeout(300)
async def test_a_complete_stale_temp_file_is_recovered_and_delivered(
    sender: Sender, pcns: Pcns
) -> None:
    """A complete record the filter left as its temp file more than 60 s ago is renamed to its
    record name and delivered in spool order with the others, and counted as recovered."""
    stale = leave_as_temp(sender.write("alice", "Pw-a-1!"), age=120)
    sender.write("bob", "Pw-b-1!")
    with pcns.serving():
        done = sender.run_once()
        assert done.returncode == 0, done.stderr
        received = await pcns.received()
    assert received == sender.spooled
    s = stats(done)
    assert (s["recovered"], s["delivered"], s["set_aside"], s["remaining"]) == (1, 2, 0, 0)
    assert f"recovered spool record {stale.name.removesuffix('.tmp')}" in done.stderr
    assert list(sender.spool.iterdir()) == [sender.spool / "bad"]
    assert list((sender.spool / "bad").iterdir()) == []


@pytest.mark.timeout(300)
async def test_a_truncated_stale_temp_file_is_set_aside_and_the_rest_goes(
    sender: Sender, pcns: Pcns
) -> None:
    """A partial record the filter left as its temp file more than 60 s ago is moved to bad\\
    with event 3002, and the record after it is still delivered."""
    first = sender.write("alice", "Pw-a-1!")
    truncated = first.read_bytes()[:40]
    partial = leave_as_temp(first, age=120, data=truncated)
    sender.write("bob", "Pw-b-1!")
    with pcns.serving():
        done = sender.run_once()
        assert done.returncode == 0, done.stderr
        received = await pcns.received()
    assert received == [sender.spooled[1]]
    s = stats(done)
    assert (s["recovered"], s["delivered"], s["set_aside"], s["remaining"]) == (0, 1, 1, 0)
    assert len(events(done, 3002)) == 1, done.stderr
    assert not partial.exists()
    assert (sender.spool / "bad" / partial.name).read_bytes() == truncated


@pytest.mark.timeout(300)
def test_a_young_temp_file_is_left_alone(sender: Sender) -> None:
    """A temp file last written less than 60 s ago (maybe a write in progress) is neither
    renamed nor set aside, complete or not."""
    complete = leave_as_temp(sender.write("alice", "Pw-a-1!"), age=30)
    record = complete.read_bytes()
    partial = leave_as_temp(sender.write("bob", "Pw-b-1!"), age=0, data=b"PCNSSPL\0")
    done = sender.run_once()
    assert done.returncode == 0, done.stderr
    s = stats(done)
    assert (s["recovered"], s["set_aside"], s["remaining"]) == (0, 0, 0)
    assert not events(done, 3002), done.stderr
    assert complete.read_bytes() == record
    assert partial.read_bytes() == b"PCNSSPL\0"
    assert sender.records() == []
    assert list((sender.spool / "bad").iterdir()) == []


@pytest.mark.timeout(300)
async def test_400_drops_the_record_and_401_keeps_it(
    sender: Sender, pcns: Pcns, tmp_path: Path
) -> None:
    """pcns' 400 (sealed to a key it does not have; a user with a control character) drops the
    record with event 3001 and the queue goes on; a 401 (wrong secret) keeps the record with
    event 3004 until the secret is fixed."""
    stranger = HookPublicKey("hpk-20200101000000-abcdef", pcns.key.point)
    sender.write("alice", "Pw-1!", key=stranger)
    sender.write("bad\x01user", "Pw-2!")
    sender.write("carol", "Pw-3!")
    with pcns.serving():
        done = sender.run_once()
        assert done.returncode == 0, done.stderr
        assert len(events(done, 3001)) == 2, done.stderr
        assert "bad?user" in done.stderr  # the control character is never logged as it is
        assert await pcns.received() == [sender.spooled[2]]

        wrong = tmp_path / "wrong.whsec"
        wrong.write_text("whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
        assert sender.configure(secret=wrong).returncode == 0
        sender.write("dave", "Pw-4!")
        refused = sender.run_once()
        assert refused.returncode == 1
        assert events(refused, 3004), refused.stderr
        assert len(sender.records()) == 1
        assert sender.status()["state"] == "misconfigured"

        assert sender.configure().returncode == 0
        fixed = sender.run_once()
        assert fixed.returncode == 0, fixed.stderr
        assert sender.records() == []
        assert (await pcns.received())[-1] == sender.spooled[3]


@pytest.mark.timeout(300)
def test_status_reports_depth_and_oldest_age(sender: Sender) -> None:
    """`status` prints the spool depth, the age of the oldest change and the last error as
    key: value lines; a change older than AlertAgeSeconds raises event 3003."""
    empty = sender.status()
    assert empty["depth"] == "0"
    sender.write("alice", "Pw-1!", at=time.time() - 600)
    sender.write("bob", "Pw-2!")
    sender.configure("--alert-age", "300", url=f"http://127.0.0.1:{free_port()}")
    failed = sender.run_once()
    assert failed.returncode == 1
    assert events(failed, 3003), failed.stderr  # the oldest is older than AlertAgeSeconds
    st = sender.status()
    assert st["depth"] == "2"
    assert 600 <= int(st["oldest_age_seconds"]) < 900
    assert st["state"] == "retrying"
    assert "cannot reach pcns" in st["last_error"]
    assert "last_error_at" in st


def test_status_of_a_broken_configuration_still_reads_its_spool(sender: Sender) -> None:
    """With the Url value gone, `status` says the sender is not configured and still counts
    the configured spool folder, records set aside in bad\\ included, whatever their name."""
    sender.write("alice", "Pw-1!")
    bad = sender.spool / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "0000000000000000-00000001-00000001.pcs.tmp").write_bytes(b"partial")
    sender.wine.reg_delete(PCNS_SENDER_KEY, "Url")
    st = sender.status()
    assert st["configured"].startswith("no")
    assert st["spool"] == sender.wine.to_windows_path(sender.spool)
    assert (st["depth"], st["bad"]) == ("1", "1")


@pytest.mark.timeout(300)
def test_configure_refuses_plain_http_off_loopback_and_bad_keys(
    sender: Sender, tmp_path: Path
) -> None:
    """`configure` refuses http:// to a non-loopback host, a key file that is no P-256 point and
    a malformed secret, each with one line naming the option and exit code 2; a PEM key file is
    stored as the 65-byte point and the secret only DPAPI-protected."""
    remote = sender.configure(url="http://pcns.example.net:8080")
    assert remote.returncode == 2
    assert remote.stderr.strip().splitlines()[-1].startswith("pcns-sender configure: --url:")

    junk = tmp_path / "junk.hex"
    junk.write_text("04" + "00" * 64 + "\n")
    sender.pcns.key_hex, saved = junk, sender.pcns.key_hex
    try:
        off_curve = sender.configure()
        junk.write_text("not a key\n")
        garbage = sender.configure()
    finally:
        sender.pcns.key_hex = saved
    for done in (off_curve, garbage):
        assert done.returncode == 2
        assert "--recipient-key-file:" in done.stderr
        assert "Traceback" not in done.stderr

    secret = tmp_path / "bad.whsec"
    secret.write_text("not-a-secret\n")
    bad_secret = sender.configure(secret=secret)
    assert bad_secret.returncode == 2
    assert "--secret-file:" in bad_secret.stderr

    sender.pcns.key_hex, saved = sender.pcns.key_pem, sender.pcns.key_hex
    try:
        pem = sender.configure(url="https://127.0.0.1:1")
    finally:
        sender.pcns.key_hex = saved
    assert pem.returncode == 0, pem.stderr
    point = sender.wine.reg_query(PCNS_SENDER_KEY, "RecipientPublicKey")
    assert point is not None
    assert point.lower() == sender.pcns.key.point.hex()
    stored = sender.wine.reg_query(PCNS_SENDER_KEY, "Secret")
    raw_key = base64.b64decode(sender.pcns.files.secret.removeprefix("whsec_"))
    assert stored
    assert raw_key.hex() not in stored.lower()  # DPAPI-protected, not the key itself


@needs_htpasswd
@pytest.mark.timeout(600)
async def test_service_delivers_a_filter_change_and_stops(sender: Sender, pcns: Pcns) -> None:
    """Registered with `sc create` and started with `net start`, the sender delivers a change
    the filter signals, and `net stop` stops it cleanly."""
    wine = sender.wine
    # Wine ends service processes once no ordinary process is left in the prefix (Windows
    # does not): one stays for the length of the test.
    keeper = wine.start(["cmd", "/c", "ping", "-n", "900", "127.0.0.1"])
    try:
        binpath = f'"{wine.to_windows_path(sender.build / "pcns-sender.exe")}" service'
        wine.run(["sc", "delete", "pcns-sender"], timeout=60)
        created = wine.run(["sc", "create", "pcns-sender", "binpath=", binpath], timeout=60)
        assert created.returncode == 0, created.stdout + created.stderr
        query = wine.run(["sc", "query", "pcns-sender"], timeout=60)
        assert "pcns-sender" in query.stdout, (created, query)
        with pcns.serving():
            started = wine.run(["net", "start", "pcns-sender"], timeout=120)
            assert started.returncode == 0, started.stdout + started.stderr
            await asyncio.sleep(1)
            captured = sender.filter_change("erin", UNICODE_PASSWORD)
            assert captured.returncode == 0, captured.stdout + captured.stderr
            # Well within the 60 s rescan timer: the filter's signal woke the service.
            assert await drained(sender, 20)
            await wait_verified(pcns.files.root / "wiki.htpasswd", "erin", UNICODE_PASSWORD)
            stopped = wine.run(["net", "stop", "pcns-sender"], timeout=120)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            query = wine.run(["sc", "query", "pcns-sender"], timeout=60)
            assert "STOPPED" in query.stdout, query.stdout
    finally:
        wine.run(["net", "stop", "pcns-sender"], timeout=120)
        wine.run(["sc", "delete", "pcns-sender"], timeout=60)
        keeper.stop()


@pytest.mark.timeout(600)
async def test_a_long_spool_drains_in_one_pass_in_order(sender: Sender, pcns: Pcns) -> None:
    """One `run --once` delivers 300 spooled changes in one pass, each exactly once and in spool
    order, and empties the spool (its rate is measured by bench.windows, not here)."""
    n = 300
    for i in range(n):
        sender.write(f"bulk{i}", f"Pw-bulk-{i}!")
    with pcns.serving():
        done = sender.run_once()
        assert done.returncode == 0, done.stderr
        assert await pcns.received() == sender.spooled
    s = stats(done)
    assert (s["delivered"], s["remaining"], s["dropped"]) == (n, 0, 0)
    assert sender.records() == []


@pytest.mark.timeout(300)
async def test_a_bad_record_that_cannot_be_removed_does_not_spin(
    sender: Sender, pcns: Pcns
) -> None:
    """A corrupt record that can be neither moved to bad\\ nor deleted (here: bad is a file and
    the record is read-only) is reported and left; the pass ends with a backoff instead of
    walking the spool again and again at full speed, and the change after it still goes."""
    (sender.spool / "bad").rmdir()
    (sender.spool / "bad").write_text("not a directory\n")
    stuck = sender.write("alice", "Pw-a-1!")
    stuck.write_bytes(stuck.read_bytes()[:40])
    stuck.chmod(0o444)
    sender.write("bob", "Pw-b-1!")
    try:
        with pcns.serving():
            done = sender.sender("run", "--once", "--stats", timeout=90)
            assert await pcns.received() == [sender.spooled[1]]
        assert done.returncode == 1, done.stderr
        assert stats(done)["delivered"] == 1, done.stdout + done.stderr
        assert stats(done)["remaining"] == 1
        assert 1 <= len(events(done, 3002)) <= 4, done.stderr
        assert stuck.exists()
    finally:
        stuck.chmod(0o644)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["DomainSid", "SpoolDir"])
def test_registry_values_too_long_for_the_sender_are_refused(sender: Sender, name: str) -> None:
    """A DomainSid or SpoolDir written into the registry by hand, longer than `configure`
    accepts (but not than config.c reads), makes the sender refuse the configuration with a
    message naming the value and keep the spool, instead of overrunning its buffers (a long
    DomainSid used to crash it; a long SpoolDir truncated its paths)."""
    if name == "DomainSid":
        value = "S-1-5-21-" + "1234567890-" * 22 + "1"
    else:
        deep = sender.spool / "/".join(["d" * 60] * 5)
        deep.mkdir(parents=True)
        sender.spool = deep
        value = sender.wine.to_windows_path(deep)
        assert 196 <= len(value) < 1024
    sender.write("alice", "Pw-1!")
    sender.wine.reg_add(PCNS_SENDER_KEY, name, "REG_SZ", value)
    done = sender.run_once()
    assert done.returncode == 1, done
    assert f"registry value {name} is too long" in done.stderr, done.stderr
    assert len(sender.records()) == 1


@pytest.mark.timeout(300)
def test_run_once_fails_when_the_spool_cannot_be_listed(sender: Sender) -> None:
    """`run --once` exits 1, not 0, when SpoolDir cannot be listed: a spool it cannot see is not
    an empty one."""
    gone = sender.spool / "gone"
    sender.wine.reg_add(PCNS_SENDER_KEY, "SpoolDir", "REG_SZ", sender.wine.to_windows_path(gone))
    done = sender.run_once()
    assert done.returncode == 1, done
    assert "cannot list the spool" in done.stderr, done.stderr


@pytest.mark.timeout(300)
def test_configure_refuses_a_network_spool(sender: Sender) -> None:
    """`configure --spool \\\\server\\share` is refused (exit 2): the filter would write there
    from inside LSASS, over SMB, on every password change."""
    for unc in ("\\\\fileserver\\pcns\\spool", "\\\\?\\UNC\\fileserver\\pcns"):
        done = sender.sender(
            "configure",
            "--url",
            sender.pcns.files.url,
            "--source",
            "dc01",
            "--secret-file",
            sender.wine.to_windows_path(sender.pcns.files.secret_file),
            "--recipient-key-id",
            sender.pcns.key.key_id,
            "--recipient-key-file",
            sender.wine.to_windows_path(sender.pcns.key_hex),
            "--spool",
            unc,
        )
        assert done.returncode == 2, done
        assert "--spool: must be an absolute path on a local drive" in done.stderr, done.stderr
