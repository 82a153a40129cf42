"""pcnsflt.dll under Wine 10, called by harness.exe the way LSASS calls a password filter.

The registry key is written with Wine's reg.exe; each change must leave exactly one spool
record (windows/README.md, "The spool record") whose sealed password pcns' Python side opens
with the info built from the record's own fields.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.windows.conftest import (
    EVENTLOG_DEBUG,
    PCNS_SENDER_KEY,
    Wine,
    WineResult,
    missing,
    reported_events,
)
from vault.hook_seal import seal_info

pytestmark = pytest.mark.e2e

SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
KEY_ID = "hpk-20261201100000-a1b2c3"
SOURCE = "dc01"
NAME = re.compile(r"^(?P<at>[0-9a-f]{16})-(?P<counter>[0-9a-f]{8})-[0-9a-f]{8}\.pcs$")
WEBHOOK_ID = re.compile(rb"^pcns_[0-9a-f]{32}$")
FILETIME_UNIX_EPOCH = 116444736000000000  # 1970-01-01 in 100 ns since 1601
PASSWORD_MAX = 4096 - 65 - 16  # UTF-8 bytes that fit one sealed field


@dataclass(frozen=True)
class Record:
    rid: int
    changed_at: int
    webhook_id: bytes
    source: bytes
    user: bytes
    key_id: bytes
    sealed: bytes


def parse_record(data: bytes) -> Record:
    """A spool record, version 1, checked as the sender must check it (magic, lengths, SHA-256)."""
    assert 24 + 5 * 4 + 32 <= len(data) <= 32 * 1024
    assert data[:8] == b"PCNSSPL\0"
    version, flags, rid, changed_at = struct.unpack_from("<HHIQ", data, 8)
    assert (version, flags) == (1, 0)
    pos, fields = 24, []
    for _ in range(5):
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        assert length <= 4096
        fields.append(data[pos : pos + length])
        pos += length
    assert pos == len(data) - 32
    assert hashlib.sha256(data[:pos]).digest() == data[pos:]
    return Record(rid, changed_at, *fields)


def open_record(record: Record, key: ec.EllipticCurvePrivateKey) -> str:
    """The password in a record, opened as pcns' receiver opens it."""
    info = seal_info(
        source=record.source.decode(),
        webhook_id=record.webhook_id.decode(),
        user=record.user.decode(),
        key_id=record.key_id.decode(),
    )
    return SUITE.decrypt(record.sealed, key, info=info).decode("utf-8")


@dataclass(frozen=True)
class Hook:
    key: ec.EllipticCurvePrivateKey
    spool: Path

    @property
    def point(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def records(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.spool.iterdir()) if p.is_file()}


def configure(wine: Wine, hook: Hook) -> None:
    wine.reg_delete(PCNS_SENDER_KEY)
    wine.reg_add(PCNS_SENDER_KEY, "Source", "REG_SZ", SOURCE)
    wine.reg_add(PCNS_SENDER_KEY, "RecipientKeyId", "REG_SZ", KEY_ID)
    wine.reg_add(PCNS_SENDER_KEY, "RecipientPublicKey", "REG_BINARY", hook.point)
    wine.reg_add(PCNS_SENDER_KEY, "SpoolDir", "REG_SZ", wine.to_windows_path(hook.spool))


@pytest.fixture
def hook(wine: Wine, tmp_path: Path) -> Iterator[Hook]:
    """HKLM\\SOFTWARE\\pcns\\Sender configured with a fresh hook key and an empty spool."""
    spool = tmp_path / "spool"
    spool.mkdir()
    configured = Hook(ec.generate_private_key(ec.SECP256R1()), spool)
    configure(wine, configured)
    yield configured
    wine.reg_delete(PCNS_SENDER_KEY)


@pytest.fixture
def unconfigured(wine: Wine) -> Iterator[None]:
    wine.reg_delete(PCNS_SENDER_KEY)
    yield
    wine.reg_delete(PCNS_SENDER_KEY)


def change(
    build: Path,
    wine: Wine,
    tmp_path: Path,
    *,
    password: str | None = "correct horse battery staple",  # noqa: S107 - a test password
    utf16: bytes | None = None,
    user: str = "alice",
    rid: int = 1104,
    threads: int = 1,
    calls: int = 1,
    extra: Sequence[str] = (),
    dll: str = "pcnsflt.dll",
    timeout: float = 120,
) -> WineResult:
    """harness.exe calling the DLL's exports; the password goes through a file (UTF-8 or raw)."""
    secret = tmp_path / "password.in"
    args: list[str | Path] = [build / "tests" / "harness.exe"]
    args.append(build / dll if dll == "pcnsflt.dll" else build / "tests" / dll)
    if utf16 is not None:
        secret.write_bytes(utf16)
        args += ["--password-utf16-file", wine.to_windows_path(secret)]
    elif password is not None:
        secret.write_bytes(password.encode("utf-8"))
        args += ["--password-file", wine.to_windows_path(secret)]
    args += ["--user", user, "--rid", str(rid), "--threads", str(threads), "--calls", str(calls)]
    args += list(extra)
    return wine.run(args, timeout=timeout, env={"WINEDEBUG": EVENTLOG_DEBUG})


def assert_all_ok(result: WineResult, calls: int) -> None:
    assert result.returncode == 0, result
    assert f"calls={calls} ok={calls} failed=0 crashed=0" in result.stdout, result


def test_dll_is_shaped_for_lsass(windows_build: Path) -> None:
    """The DLL exports the three plain LSA names, imports only system DLLs, has NX and ASLR."""
    objdump = "x86_64-w64-mingw32-objdump"
    try:
        out = subprocess.run(
            [objdump, "-p", str(windows_build / "pcnsflt.dll")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except FileNotFoundError:
        missing(f"{objdump} missing")
    exports = re.findall(r"^\s*\[\s*\d+\]\s+(\S+)$", out, re.MULTILINE)
    assert sorted(exports) == ["InitializeChangeNotify", "PasswordChangeNotify", "PasswordFilter"]
    imports = {name.lower() for name in re.findall(r"DLL Name: (\S+)", out)}
    allowed = {"bcrypt.dll", "advapi32.dll", "kernel32.dll"}
    assert imports, out
    assert all(name in allowed or name.startswith("api-ms-") for name in imports), imports
    assert not any("msvcr" in name or "ucrt" in name for name in imports)
    characteristics = int(re.search(r"DllCharacteristics\s+([0-9a-fA-F]+)", out)[1], 16)
    assert characteristics & 0x0100, "NX_COMPAT"
    assert characteristics & 0x0040, "DYNAMIC_BASE"
    assert characteristics & 0x0020, "HIGH_ENTROPY_VA"


@pytest.mark.parametrize("configuration", ["no key", "no public key", "off-curve public key"])
def test_unconfigured_filter_succeeds_and_writes_nothing(
    windows_build: Path, wine: Wine, tmp_path: Path, unconfigured: None, configuration: str
) -> None:
    """Unconfigured, every change succeeds, nothing is spooled and 1001 is logged once."""
    spool = tmp_path / "spool"
    spool.mkdir()
    if configuration != "no key":
        wine.reg_add(PCNS_SENDER_KEY, "Source", "REG_SZ", SOURCE)
        wine.reg_add(PCNS_SENDER_KEY, "RecipientKeyId", "REG_SZ", KEY_ID)
        wine.reg_add(PCNS_SENDER_KEY, "SpoolDir", "REG_SZ", wine.to_windows_path(spool))
    if configuration == "off-curve public key":
        point = Hook(ec.generate_private_key(ec.SECP256R1()), spool).point
        wine.reg_add(
            PCNS_SENDER_KEY, "RecipientPublicKey", "REG_BINARY", point[:64] + bytes([point[64] ^ 1])
        )
    result = change(windows_build, wine, tmp_path, calls=3)
    assert_all_ok(result, 3)
    assert list(spool.iterdir()) == []
    default_spool = wine.drive_c / "ProgramData" / "pcns" / "spool"
    assert not default_spool.exists() or list(default_spool.iterdir()) == []
    events = reported_events(result.stderr)
    assert [e.event_id for e in events] == [1001], events
    assert "not being captured" in events[0].strings[0]


def test_one_change_one_record_that_opens(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook
) -> None:
    """One change leaves one record whose fields are the change's and whose seal opens to it."""
    before = time.time()
    result = change(windows_build, wine, tmp_path, password="Tr0ub4dor&3", rid=1104)
    after = time.time()
    assert_all_ok(result, 1)
    assert reported_events(result.stderr) == []
    records = hook.records()
    assert len(records) == 1, records.keys()
    ((name, data),) = records.items()
    record = parse_record(data)
    assert (record.rid, record.user, record.source, record.key_id) == (
        1104,
        b"alice",
        SOURCE.encode(),
        KEY_ID.encode(),
    )
    assert WEBHOOK_ID.match(record.webhook_id)
    changed = (record.changed_at - FILETIME_UNIX_EPOCH) / 1e7
    assert before - 5 <= changed <= after + 5
    match = NAME.match(name)
    assert match
    assert int(match["at"], 16) == record.changed_at
    assert open_record(record, hook.key) == "Tr0ub4dor&3"
    with pytest.raises(InvalidTag):
        SUITE.decrypt(
            record.sealed,
            hook.key,
            info=seal_info(
                source=SOURCE, webhook_id=record.webhook_id.decode(), user="bob", key_id=KEY_ID
            ),
        )


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "🔑🐍 emoji outside the BMP 👩‍👩‍👧"),
        ("alice", "e\u0301 combining: cafe\u0301, n\u0303, \u0041\u030a"),
        ("alice", "密码是中文 パスワード 비밀번호"),
        ("alice", "mixed ÄÖÜß €100 \U0001d11e \u200d\ufeff end"),
        ("Zoë-李", "plain"),
        ("alice", "a" * PASSWORD_MAX),
    ],
    ids=["emoji", "combining", "cjk", "mixed", "unicode-user", "longest"],
)
def test_unicode_arrives_intact(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook, user: str, password: str
) -> None:
    """Passwords (and user names) outside ASCII arrive exactly, surrogate pairs included."""
    result = change(windows_build, wine, tmp_path, user=user, password=password)
    assert_all_ok(result, 1)
    (data,) = hook.records().values()
    record = parse_record(data)
    assert record.user.decode("utf-8") == user
    assert open_record(record, hook.key) == password


@pytest.mark.parametrize(
    "units",
    [
        "a".encode("utf-16-le") + b"\x00\xd8" + "b".encode("utf-16-le"),  # lone high surrogate
        b"\x00\xdc" + "abc".encode("utf-16-le"),  # lone low surrogate first
        "abc".encode("utf-16-le") + b"\x3d\xd8",  # high surrogate as the last unit
        b"\x11\xdc\x3d\xd8",  # low then high: not a pair
    ],
    ids=["lone-high", "lone-low", "high-at-end", "reversed-pair"],
)
def test_unpaired_surrogate_refused_quietly(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook, units: bytes
) -> None:
    """A password with an unpaired surrogate is not spooled; the change still succeeds; 1003."""
    result = change(windows_build, wine, tmp_path, utf16=units)
    assert_all_ok(result, 1)
    assert hook.records() == {}
    assert [e.event_id for e in reported_events(result.stderr)] == [1003]


def test_too_long_password_reported_not_spooled(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook
) -> None:
    """A password longer than a record can hold is not spooled, succeeds, and logs 1002."""
    result = change(windows_build, wine, tmp_path, password="a" * (PASSWORD_MAX + 1))
    assert_all_ok(result, 1)
    assert hook.records() == {}
    events = reported_events(result.stderr)
    assert [e.event_id for e in events] == [1002]
    assert "too long" in events[0].strings[0]
    assert "a" * 20 not in result.stderr


@pytest.mark.parametrize("length", [0, 1, 2047, 2048])
def test_password_ending_at_a_no_access_page(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook, length: int
) -> None:
    """A password whose last byte is the last readable byte (no NUL after it) is read safely."""
    password = ("x" * length)[:length]
    result = change(windows_build, wine, tmp_path, password=password)
    assert_all_ok(result, 1)
    (data,) = hook.records().values()
    assert open_record(parse_record(data), hook.key) == password


def test_harness_catches_a_filter_that_reads_past_length(
    windows_build: Path, wine: Wine, tmp_path: Path
) -> None:
    """A filter that scans for a NUL faults at the no-access page, and the harness says so."""
    result = change(windows_build, wine, tmp_path, dll="nulscan.dll")
    assert result.returncode == 1, result
    assert "crashed=1" in result.stdout
    assert "exception 0xC0000005" in result.stdout


def test_missing_spool_dir_reported(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook
) -> None:
    """With SpoolDir gone the change still succeeds; 1002 names the step; nothing is created."""
    wine.reg_add(PCNS_SENDER_KEY, "SpoolDir", "REG_SZ", wine.to_windows_path(hook.spool / "gone"))
    result = change(windows_build, wine, tmp_path, password="never written")
    assert_all_ok(result, 1)
    events = reported_events(result.stderr)
    assert [e.event_id for e in events] == [1002]
    assert "SpoolDir failed at create" in events[0].strings[0]
    assert not (hook.spool / "gone").exists()
    assert "never written" not in result.stderr


@pytest.mark.parametrize(
    "spool_dir",
    [
        "\\\\fileserver\\pcns\\spool",
        "\\\\?\\UNC\\fileserver\\pcns",
        "\\\\.\\pipe\\pcns",
        "pcns\\spool",
    ],
    ids=["unc", "long-unc", "device", "relative"],
)
def test_network_or_relative_spool_dir_is_not_used(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook, spool_dir: str
) -> None:
    """A SpoolDir that is not an absolute path on a local drive is refused when the filter
    reads it (no SMB or device I/O from inside LSASS): nothing is opened, the change succeeds,
    and 1001 names SpoolDir."""
    wine.reg_add(PCNS_SENDER_KEY, "SpoolDir", "REG_SZ", spool_dir)
    result = change(windows_build, wine, tmp_path, password="never written")
    assert_all_ok(result, 1)
    events = reported_events(result.stderr)
    assert [e.event_id for e in events] == [1001], events
    assert "SpoolDir" in events[0].strings[0]
    assert "never written" not in result.stderr


@pytest.mark.parametrize(
    ("user", "rid"),
    [
        ("krbtgt", 502),
        ("KRBTGT", 502),
        ("renamed", 502),
        ("krbtgt_41223", 1105),
        ("WS01$", 1106),
        ("CORP$", 1107),
        ("svc-web$", 1108),
    ],
)
def test_krbtgt_computer_and_trust_accounts_are_never_spooled(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook, user: str, rid: int
) -> None:
    """krbtgt (by RID or name), an RODC's krbtgt_N and every account ending in '$' are passed
    over silently: no record, no event, success."""
    result = change(windows_build, wine, tmp_path, user=user, rid=rid)
    assert_all_ok(result, 1)
    assert hook.records() == {}
    assert reported_events(result.stderr) == []


def test_names_like_krbtgt_are_still_spooled(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook
) -> None:
    """Only krbtgt itself and krbtgt_*: a user named krbtgtfan is an ordinary user."""
    result = change(windows_build, wine, tmp_path, user="krbtgtfan", rid=1109)
    assert_all_ok(result, 1)
    (data,) = hook.records().values()
    assert parse_record(data).user == b"krbtgtfan"


@pytest.mark.timeout(300)
def test_concurrent_changes_each_spooled_in_order(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook
) -> None:
    """4 threads x 25 changes: 100 distinct records, each opens, in creation order per thread."""
    threads, calls = 4, 25
    result = change(
        windows_build,
        wine,
        tmp_path,
        password="parallel päss",
        threads=threads,
        calls=calls,
        rid=1000,
        extra=["--rid-per-call"],
        timeout=240,
    )
    assert_all_ok(result, threads * calls)
    records = hook.records()
    assert len(records) == threads * calls
    assert all(NAME.match(name) for name in records)
    parsed = {name: parse_record(data) for name, data in records.items()}
    assert len({r.webhook_id for r in parsed.values()}) == threads * calls
    assert all(open_record(r, hook.key) == "parallel päss" for r in parsed.values())
    for t in range(threads):
        rids = [r.rid for _, r in sorted(parsed.items()) if (r.rid - 1000) // 100000 == t]
        assert rids == [1000 + t * 100000 + i for i in range(calls)]
    stamps = [r.changed_at for _, r in sorted(parsed.items())]
    assert stamps == sorted(set(stamps))  # each change its own time, in name order


def test_no_plaintext_in_spool(windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook) -> None:
    """No spool byte sequence is the password, in UTF-8 or in UTF-16LE."""
    password = "Sphinx-of-black-quartz-judge-my-vow-ü"
    result = change(windows_build, wine, tmp_path, password=password, threads=2, calls=5)
    assert_all_ok(result, 10)
    assert len(hook.records()) == 10
    needles = [password.encode("utf-8"), password.encode("utf-16-le"), password[:12].encode()]
    for path in hook.spool.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), path


@pytest.mark.timeout(300)
def test_latency_report_with_four_threads(
    windows_build: Path, wine: Wine, tmp_path: Path, hook: Hook
) -> None:
    """200 changes on 4 threads all succeed and the harness reports their latency percentiles
    (the figures belong to bench.windows; no timing is asserted here)."""
    result = change(
        windows_build, wine, tmp_path, threads=4, calls=50, extra=["--latency"], timeout=240
    )
    assert_all_ok(result, 200)
    match = re.search(r"p50_us=([\d.]+) p99_us=([\d.]+) max_us=([\d.]+)", result.stdout)
    assert match, result.stdout
    p50, p99, worst = (float(x) for x in match.groups())
    assert 0 < p50 <= p99 <= worst
    assert len(hook.records()) == 200


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ("abc".encode("utf-16-le"), b"abc"),
        ("a\0b".encode("utf-16-le"), b"a\0b"),  # a NUL inside the counted string is kept
        ("é€🔑".encode("utf-16-le"), "é€🔑".encode()),
        (b"", b""),
        (b"a\x00b", "error 1"),  # odd length
        (b"\x00\xd8", "error 2"),  # unpaired surrogate
    ],
    ids=["ascii", "inner-nul", "bmp-and-pair", "empty", "odd-length", "unpaired"],
)
def test_utf16_to_utf8_by_length(
    windows_build: Path, wine: Wine, units: bytes, expected: bytes | str
) -> None:
    """utf.c converts exactly Length bytes, keeps pairs, refuses odd lengths and lone surrogates."""
    result = wine.run(
        [windows_build / "tests" / "hpke_vectors.exe", "utf16", units.hex() or "-"], timeout=60
    )
    if isinstance(expected, bytes):
        assert result.returncode == 0, result
        assert bytes.fromhex(result.stdout.strip()) == expected
    else:
        assert result.returncode != 0
        assert result.stdout.strip() == expected
