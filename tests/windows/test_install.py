"""``pcns-sender.exe install``/``uninstall`` (windows/src/install.c) and the MSI, under Wine 10.

The verbs edit machine-wide state (LSA's Notification Packages, the service manager, System32),
so this module runs in a Wine prefix of its own, reset before each test. What Wine cannot show
(LSASS loading the DLL, the protected bit of a DACL, failure actions kept by the service
manager, UPGRADINGPRODUCTCODE in a major upgrade) is said where it matters and listed in
deploy/windows/README.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.windows.conftest import (
    REPO,
    WINDOWS,
    Wine,
    WineProcess,
    WineResult,
    booted,
    missing,
)

pytestmark = pytest.mark.e2e

LSA = r"HKLM\SYSTEM\CurrentControlSet\Control\Lsa"
NP = "Notification Packages"
SERVICE_KEY = r"HKLM\SYSTEM\CurrentControlSet\Services\pcns-sender"
EVENT_KEY = r"HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\pcns"
SESSION_MANAGER = r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager"
SENDER_KEY = r"HKLM\SOFTWARE\pcns\Sender"
UNINSTALL_KEY = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall"
PRODUCT_NAME = "pcns password change notification (domain controller)"
ROOTS = {"HKLM": "HKEY_LOCAL_MACHINE"}


def project_version() -> str:
    """The version the build stamps (pcns.__version__, the one source of the package's)."""
    text = (REPO / "pcns" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    assert found, "no __version__ in pcns/__init__.py"
    return found.group(1)


def multi_sz(entries: list[str]) -> bytes:
    """A well-formed REG_MULTI_SZ: each entry NUL-terminated, then the list's final NUL."""
    return b"".join(e.encode("utf-16-le") + b"\0\0" for e in entries) + b"\0\0"


def lsa_entries(data: bytes) -> list[str]:
    """The entries LSA reads from REG_MULTI_SZ data: up to the first empty string."""
    text = data[: len(data) // 2 * 2].decode("utf-16-le")
    entries: list[str] = []
    for part in text.split("\0"):
        if not part:
            break
        entries.append(part)
    return entries


class Box:
    """This module's Wine prefix, with the built artifacts and helpers to look inside."""

    def __init__(self, wine: Wine, build: Path) -> None:
        self.wine = wine
        self.build = build
        self.exe = build / "pcns-sender.exe"
        self.dll = build / "pcnsflt.dll"
        self._exports = 0

    @property
    def system32(self) -> Path:
        return self.wine.drive_c / "windows" / "system32"

    @property
    def program_data(self) -> Path:
        return self.wine.drive_c / "ProgramData"

    @property
    def spool(self) -> Path:
        return self.program_data / "pcns" / "spool"

    def sender(self, *args: str, timeout: float = 120) -> WineResult:
        return self.wine.run([str(self.exe), *args], timeout=timeout)

    def run(self, *args: str, timeout: float = 120) -> WineResult:
        return self.wine.run(list(args), timeout=timeout)

    def export(self, key: str) -> dict[str, str] | None:
        """The values of one key as ``reg export`` writes them (name -> right-hand side)."""
        self._exports += 1
        out = self.wine.scratch / f"export-{self._exports}.reg"
        result = self.run("reg", "export", key, Wine.to_windows_path(out), "/y")
        if result.returncode != 0 or not out.exists():
            return None
        text = out.read_bytes().decode("utf-16")
        text = re.sub(r"\\\r?\n\s*", "", text)
        root, _, rest = key.partition("\\")
        header = f"[{ROOTS.get(root, root)}\\{rest}]".lower()
        values: dict[str, str] = {}
        inside = False
        for line in text.splitlines():
            if line.startswith("["):
                inside = line.strip().lower() == header
                continue
            if inside and line.startswith('"'):
                name, _, value = line[1:].partition('"=')
                values[name] = value
        return values

    def packages_raw(self) -> bytes | None:
        """Notification Packages' data, exactly as stored; None when the value is absent."""
        values = self.export(LSA)
        assert values is not None, "the Lsa key is missing"
        value = values.get(NP)
        if value is None:
            return None
        assert value.startswith("hex(7):"), f"Notification Packages is not REG_MULTI_SZ: {value}"
        return bytes.fromhex(value[len("hex(7):") :].replace(",", ""))

    def packages(self) -> list[str] | None:
        raw = self.packages_raw()
        return None if raw is None else lsa_entries(raw)

    def set_packages_raw(self, data: bytes) -> None:
        """Write Notification Packages as REG_MULTI_SZ with exactly these bytes (``reg import``)."""
        self._exports += 1
        reg = self.wine.scratch / f"import-{self._exports}.reg"
        rhs = "hex(7):" + ",".join(f"{b:02x}" for b in data)
        reg.write_text(
            "Windows Registry Editor Version 5.00\r\n\r\n"
            f"[HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Control\\Lsa]\r\n"
            f'"{NP}"={rhs}\r\n\r\n',
            encoding="utf-16",
        )
        result = self.run("reg", "import", Wine.to_windows_path(reg))
        assert result.returncode == 0, result

    def set_packages(self, entries: list[str]) -> None:
        """``reg add ... /t REG_MULTI_SZ /d "a\\0b"``, the way an administrator would."""
        self.wine.reg_add(LSA, NP, "REG_MULTI_SZ", "\\0".join(entries))

    def reset(self) -> None:
        """Nothing of pcns left, Notification Packages back to a DC's usual two entries."""
        self.sender("uninstall", "--purge")
        for leftover in self.system32.glob("pcnsflt.dll*"):
            leftover.unlink()
        shutil.rmtree(self.program_data / "pcns", ignore_errors=True)
        self.wine.reg_delete(SESSION_MANAGER, "PendingFileRenameOperations")
        self.wine.reg_delete(SENDER_KEY)
        self.set_packages(["scecli", "rassfm"])
        assert self.packages() == ["scecli", "rassfm"]

    def pending_renames(self) -> str:
        return self.wine.reg_query(SESSION_MANAGER, "PendingFileRenameOperations") or ""


@pytest.fixture(scope="module")
def box(wine: Wine, windows_build: Path) -> Iterator[Box]:
    """A Wine 10 prefix for this module alone (``wine`` only for its checks and its runner)."""
    scratch = Path(tempfile.mkdtemp(prefix="pcns-install-", dir=wine.scratch.parent))
    own = booted(scratch)
    try:
        yield Box(own, windows_build)
    finally:
        own.server("-k")
        own.server("-w", timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def clean(box: Box) -> Box:
    box.reset()
    return box


def ok(result: WineResult) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# ---- Notification Packages ------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_install_appends_pcnsflt_keeping_existing_packages(clean: Box) -> None:
    """Install appends pcnsflt after scecli and rassfm, a second install adds no duplicate, and
    uninstall takes out only pcnsflt."""
    assert clean.packages() == ["scecli", "rassfm"]

    out = ok(clean.sender("install"))
    assert clean.packages() == ["scecli", "rassfm", "pcnsflt"]
    assert clean.packages_raw() == multi_sz(["scecli", "rassfm", "pcnsflt"])
    assert "scecli, rassfm -> scecli, rassfm, pcnsflt" in out
    assert "reboot this domain controller for LSA to load pcnsflt.dll" in out

    out = ok(clean.sender("install"))
    assert clean.packages_raw() == multi_sz(["scecli", "rassfm", "pcnsflt"])
    assert "pcnsflt already listed" in out

    ok(clean.sender("uninstall"))
    assert clean.packages_raw() == multi_sz(["scecli", "rassfm"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("before", "after", "note"),
    [
        pytest.param(None, ["pcnsflt"], "the value was absent", id="absent"),
        pytest.param(b"", ["pcnsflt"], None, id="empty"),
        pytest.param(b"\0\0", ["pcnsflt"], None, id="empty-list"),
        pytest.param(
            "scecli\0rassfm".encode("utf-16-le"),
            ["scecli", "rassfm", "pcnsflt"],
            "lacked its final NUL",
            id="no-final-nul",
        ),
        pytest.param(
            "scecli\0\0rassfm\0\0".encode("utf-16-le"),
            ["scecli", "pcnsflt"],
            "characters after the list's empty-string end were dropped",
            id="entries-after-the-end",
        ),
        pytest.param(multi_sz(["scecli", "PCNSFLT"]), ["scecli", "PCNSFLT"], None, id="upper-case"),
        pytest.param(b"s\0c\0e\0c\0l\0i\0\0\0\x01", ["scecli", "pcnsflt"], None, id="odd-length"),
    ],
)
def test_install_reads_notification_packages_by_length(
    clean: Box, before: bytes | None, after: list[str], note: str | None
) -> None:
    """Install handles an absent, empty, unterminated or odd value the way LSA reads it, writes it
    back well-formed, and treats PCNSFLT as pcnsflt."""
    if before is None:
        clean.wine.reg_delete(LSA, NP)
        assert clean.packages_raw() is None
    else:
        clean.set_packages_raw(before)
        stored = clean.packages_raw()
        assert stored is not None
        if note == "lacked its final NUL":
            # reg import adds one NUL to the last entry; the list's own final NUL is still missing
            assert not stored.endswith(b"\0\0\0\0"), stored

    out = ok(clean.sender("install", "--no-reboot-note"))
    assert clean.packages() == after
    if after[-1] == "pcnsflt":
        assert clean.packages_raw() == multi_sz(after)
    if note:
        assert note in out
    assert "reboot this domain controller" not in out

    ok(clean.sender("uninstall"))
    assert "pcnsflt" not in [e.lower() for e in clean.packages() or []]


@pytest.mark.timeout(300)
def test_install_refuses_a_notification_packages_value_of_another_type(clean: Box) -> None:
    """A Notification Packages value that is not REG_MULTI_SZ is left untouched and install fails
    saying so."""
    clean.wine.reg_add(LSA, NP, "REG_SZ", "scecli")
    result = clean.sender("install")
    assert result.returncode == 1
    assert "not REG_MULTI_SZ" in result.stderr
    values = clean.export(LSA) or {}  # reg_query splits on spaces: read the export
    assert values.get(NP) == '"scecli"'


# ---- the DLL, the service, the event source, the spool --------------------------------------


@pytest.mark.timeout(300)
def test_install_copies_the_dll_to_system32(clean: Box) -> None:
    """Install copies pcnsflt.dll from beside the exe into System32, and a rerun finds it up to
    date."""
    out = ok(clean.sender("install"))
    installed = clean.system32 / "pcnsflt.dll"
    assert installed.read_bytes() == clean.dll.read_bytes()
    assert r"C:\windows\system32\pcnsflt.dll" in out
    assert "(up to date)" in ok(clean.sender("install"))


@pytest.mark.timeout(300)
def test_install_creates_the_service(clean: Box) -> None:
    """The pcns-sender service runs '"...\\pcns-sender.exe" service' as LocalSystem at boot, and
    a second install updates it instead of failing."""
    out = ok(clean.sender("install"))
    assert "pcns-sender created" in out
    # Wine's sc has no qc/qfailure: the service manager keeps its configuration in the registry
    values = clean.export(SERVICE_KEY)
    assert values is not None, "no service key"
    image = clean.wine.reg_query(SERVICE_KEY, "ImagePath") or ""
    assert image.lower() == f'"{Wine.to_windows_path(clean.exe)}" service'.lower()
    assert values["Start"] == "dword:00000002"  # SERVICE_AUTO_START
    assert values["Type"] == "dword:00000010"  # SERVICE_WIN32_OWN_PROCESS
    assert values["ObjectName"] == '"LocalSystem"'
    assert values["DisplayName"] == '"pcns password change sender"'
    assert "pcnsflt.dll captures" in values["Description"]
    query = clean.run("sc", "query", "pcns-sender")
    assert query.returncode == 0
    assert "STOPPED" in query.stdout

    out = ok(clean.sender("install"))
    assert "pcns-sender updated" in out


@pytest.mark.timeout(300)
def test_install_reports_failure_actions_only_as_far_as_it_can_read_them_back(clean: Box) -> None:
    """Install sets restart after 5 s, 30 s, 60 s and says so, and says when the service manager
    (Wine's) does not keep them rather than claiming they are set."""
    out = ok(clean.sender("install"))
    assert "restart after 5 s, 30 s, 60 s (reset after 1 day)" in out
    values = clean.export(SERVICE_KEY) or {}
    if "FailureActions" in values:  # a service manager that stores them (Windows does)
        assert "does not report them back" not in out
    else:  # Wine 10 accepts SERVICE_CONFIG_FAILURE_ACTIONS and stores nothing
        assert "does not report them back" in out
        assert "no SERVICE_CONFIG_FAILURE_ACTIONS_FLAG" in out


@pytest.mark.timeout(300)
def test_install_registers_the_event_source(clean: Box) -> None:
    """The event source pcns points EventMessageFile at the exe, with TypesSupported 7."""
    ok(clean.sender("install"))
    message_file = clean.wine.reg_query(EVENT_KEY, "EventMessageFile") or ""
    assert message_file.lower() == Wine.to_windows_path(clean.exe).lower()
    assert clean.wine.reg_query(EVENT_KEY, "TypesSupported") == "0x7"


@pytest.mark.timeout(300)
def test_install_creates_a_system_only_spool(clean: Box) -> None:
    """The spool and its bad\\ folder exist after install with one ACE, SYSTEM full control
    (Wine keeps the ACE but not the DACL's protected bit)."""
    out = ok(clean.sender("install"))
    assert (clean.spool / "bad").is_dir()
    line = next(x for x in out.splitlines() if x.startswith("spool:"))
    assert re.search(r"DACL D:P?\(A;OICI;FA;;;SY\)$", line), line


@pytest.mark.timeout(300)
def test_install_uses_the_configured_spool_dir_and_purge_removes_the_configuration(
    clean: Box,
) -> None:
    """A SpoolDir in HKLM\\SOFTWARE\\pcns\\Sender is the spool install creates and uninstall
    removes when empty; the key itself stays unless --purge."""
    clean.wine.reg_add(SENDER_KEY, "SpoolDir", "REG_SZ", r"C:\pcns-test\spool")
    ok(clean.sender("install"))
    spool = clean.wine.drive_c / "pcns-test" / "spool"
    assert (spool / "bad").is_dir()
    assert not clean.spool.exists()

    ok(clean.sender("uninstall"))
    assert not spool.exists()
    assert clean.wine.reg_query(SENDER_KEY, "SpoolDir") == r"C:\pcns-test\spool"

    ok(clean.sender("uninstall", "--purge"))
    assert clean.export(SENDER_KEY) is None


@pytest.mark.timeout(300)
def test_install_refuses_a_missing_dll_before_changing_anything(clean: Box) -> None:
    """install --dll with a path that does not exist fails and leaves LSA and the services as
    they were."""
    result = clean.sender("install", "--dll", r"C:\nowhere\pcnsflt.dll")
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert clean.packages() == ["scecli", "rassfm"]
    assert clean.export(SERVICE_KEY) is None


HOLDER_C = r"""
#include <windows.h>
/* holder.exe DLL: keeps DLL loaded (mapped as an image, as LSASS keeps pcnsflt.dll) until killed;
   prints "loaded" once it is. */
int wmain(int argc, wchar_t **argv)
{
    DWORD written;
    if (argc < 2 || !LoadLibraryExW(argv[1], NULL, DONT_RESOLVE_DLL_REFERENCES))
        return 1;
    WriteFile(GetStdHandle(STD_OUTPUT_HANDLE), "loaded\n", 7, &written, NULL);
    Sleep(INFINITE);
    return 0;
}
"""


@pytest.fixture
def holder(tmp_path: Path) -> Path:
    """A Windows program that keeps a DLL loaded until stopped, as LSASS keeps pcnsflt.dll."""
    source = tmp_path / "holder.c"
    source.write_text(HOLDER_C, encoding="utf-8")
    exe = tmp_path / "holder.exe"
    with tempfile.TemporaryFile() as out:
        built = subprocess.run(
            ["x86_64-w64-mingw32-gcc", "-municode", "-o", str(exe), str(source)],
            stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False,
        )  # fmt: skip
        out.seek(0)
        assert built.returncode == 0, out.read().decode(errors="replace")
    return exe


def hold_system32_dll(box: Box, holder: Path) -> WineProcess:
    """Start holder.exe on System32's pcnsflt.dll and wait until it has the DLL loaded."""
    process = box.wine.start([str(holder), r"C:\windows\system32\pcnsflt.dll"])
    deadline = time.monotonic() + 60
    while "loaded" not in process.stdout_text():
        if not process.alive() or time.monotonic() > deadline:
            process.stop()
            pytest.fail(f"holder.exe did not load the DLL: {process.stderr_text()}", pytrace=False)
        time.sleep(0.2)
    return process


@pytest.mark.timeout(300)
def test_install_renames_a_loaded_dll_aside(clean: Box, holder: Path, tmp_path: Path) -> None:
    """When System32's pcnsflt.dll is loaded (as LSASS keeps it) and so cannot be overwritten,
    install renames it aside, queues that file for deletion at reboot and puts the new DLL in
    place."""
    ok(clean.sender("install"))
    loaded = (clean.system32 / "pcnsflt.dll").read_bytes()
    newer = tmp_path / "pcnsflt.dll"
    newer.write_bytes(clean.dll.read_bytes() + b"\0newer")
    process = hold_system32_dll(clean, holder)
    try:
        out = ok(clean.sender("install", "--dll", str(newer)))
    finally:
        process.stop()
    assert (clean.system32 / "pcnsflt.dll").read_bytes() == newer.read_bytes()
    asides = list(clean.system32.glob("pcnsflt.dll.pcns-old-*"))
    assert len(asides) == 1
    assert asides[0].read_bytes() == loaded
    assert "renamed to" in out
    assert "deleted at the reboot" in out
    assert asides[0].name.lower() in clean.pending_renames().lower()


# ---- uninstall ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_uninstall_removes_what_install_made(clean: Box) -> None:
    """Uninstall deletes the service, pcnsflt from Notification Packages, the event source, the
    DLL and the empty spool, and keeps the sender's configuration."""
    clean.wine.reg_add(SENDER_KEY, "Source", "REG_SZ", "dc1")
    ok(clean.sender("install"))
    assert clean.export(SERVICE_KEY) is not None

    out = ok(clean.sender("uninstall"))
    assert clean.export(SERVICE_KEY) is None
    assert clean.run("sc", "query", "pcns-sender").returncode != 0
    assert clean.packages_raw() == multi_sz(["scecli", "rassfm"])
    assert clean.export(EVENT_KEY) is None
    assert not (clean.system32 / "pcnsflt.dll").exists()
    assert not clean.spool.exists()
    assert clean.wine.reg_query(SENDER_KEY, "Source") == "dc1"
    assert "HKLM\\SOFTWARE\\pcns\\Sender kept" in out

    out = ok(clean.sender("uninstall"))  # again: nothing left to do, still success
    assert "was not installed" in out


@pytest.mark.timeout(300)
def test_uninstall_keeps_a_spool_with_changes_and_says_how_many(clean: Box) -> None:
    """Uninstall with changes still spooled keeps the spool, and says how many wait and how many
    are in bad\\."""
    ok(clean.sender("install"))
    for i in range(3):
        (clean.spool / f"{i:016x}-00000001-0000000{i}.pcs").write_bytes(b"sealed")
    (clean.spool / "bad" / "0000000000000009-00000001-00000009.pcs").write_bytes(b"junk")

    out = ok(clean.sender("uninstall"))
    assert "3 changes are still waiting for delivery" in out
    assert "1 unreadable in bad\\" in out
    assert len(list(clean.spool.glob("*.pcs"))) == 3
    assert clean.export(SERVICE_KEY) is None  # the rest was still uninstalled


@pytest.mark.timeout(300)
def test_uninstall_queues_a_loaded_dll_for_deletion_at_the_reboot(clean: Box, holder: Path) -> None:
    """A pcnsflt.dll that is loaded (as LSASS keeps it until the reboot) is renamed aside and
    deleted at the reboot (MoveFileEx MOVEFILE_DELAY_UNTIL_REBOOT); System32's name is free."""
    ok(clean.sender("install"))
    process = hold_system32_dll(clean, holder)
    try:
        out = ok(clean.sender("uninstall"))
    finally:
        process.stop()
    assert "is in use; renamed to" in out
    assert not (clean.system32 / "pcnsflt.dll").exists()
    asides = list(clean.system32.glob("pcnsflt.dll.pcns-old-*"))
    assert len(asides) == 1
    assert asides[0].name.lower() in clean.pending_renames().lower()
    assert "pcnsflt" not in [e.lower() for e in clean.packages() or []]


# ---- the MSI --------------------------------------------------------------------------------


def msi_path(build: Path) -> Path:
    return build / f"pcns-windows-{project_version()}.msi"


def msiinfo_export(msi: Path, table: str) -> list[list[str]]:
    """A table's rows (msiinfo export prints three header lines, then tab-separated rows)."""
    if shutil.which("msiinfo") is None:
        missing("msiinfo missing (apt-get install msitools)")
    with tempfile.TemporaryFile() as out:
        subprocess.run(["msiinfo", "export", str(msi), table], stdout=out, check=True, timeout=60)
        out.seek(0)
        lines = out.read().decode().splitlines()
    return [line.split("\t") for line in lines[3:] if line]


def msi_files(msi: Path, into: Path) -> dict[str, bytes]:
    """The files an MSI carries (msiextract), by path relative to their root folder."""
    if shutil.which("msiextract") is None:
        missing("msiextract missing (apt-get install msitools)")
    into.mkdir(parents=True)
    with tempfile.TemporaryFile() as out:
        done = subprocess.run(
            ["msiextract", "-C", str(into), str(msi)],
            stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False,
        )  # fmt: skip
        out.seek(0)
        assert done.returncode == 0, out.read().decode(errors="replace")
    return {p.relative_to(into).as_posix(): p.read_bytes() for p in into.rglob("*") if p.is_file()}


def bumped(version: str) -> str:
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    parts += [0] * (3 - len(parts))
    parts[2] += 1
    return ".".join(map(str, parts))


@pytest.mark.timeout(300)
def test_msi_places_the_files_and_runs_install_as_a_deferred_action(windows_build: Path) -> None:
    """make builds the MSI: pcnsflt.dll in System64Folder, pcns-sender.exe and README.md in
    Program Files\\pcns, and `install`/`uninstall` as deferred, non-impersonated actions after
    InstallFiles and before RemoveFiles."""
    msi = msi_path(windows_build)
    assert msi.is_file(), f"{msi} not built (is wixl installed?)"

    props = dict(row[:2] for row in msiinfo_export(msi, "Property"))
    assert props["ProductVersion"] == project_version()
    assert props["ALLUSERS"] == "1"

    files = {row[0]: row for row in msiinfo_export(msi, "File")}
    components = {row[0]: row for row in msiinfo_export(msi, "Component")}
    directories = {row[0]: row for row in msiinfo_export(msi, "Directory")}
    assert components[files["pcnsflt.dll"][1]][2] == "System64Folder"
    install_dir = components[files["pcns_sender.exe"][1]][2]
    assert directories[install_dir][1:] == ["ProgramFiles64Folder", "pcns"]
    assert files["pcns_sender.exe"][2] == "pcns-sender.exe"
    assert components[files["README.md"][1]][2] == install_dir

    # 18 = exe from an installed file, 1024 = deferred (in script), 2048 = no impersonation
    actions = {row[0]: row for row in msiinfo_export(msi, "CustomAction")}
    assert actions["PcnsInstall"][1:4] == [
        str(18 | 1024 | 2048),
        "pcns_sender.exe",
        'install --dll "[#pcnsflt.dll]" --no-reboot-note',
    ]
    assert actions["PcnsUninstall"][1:4] == [str(18 | 1024 | 2048), "pcns_sender.exe", "uninstall"]

    seq = {row[0]: (row[1], int(row[2])) for row in msiinfo_export(msi, "InstallExecuteSequence")}
    assert seq["InstallFiles"][1] < seq["PcnsInstall"][1] < seq["InstallFinalize"][1]
    assert seq["InstallInitialize"][1] < seq["PcnsUninstall"][1] < seq["RemoveFiles"][1]
    assert seq["PcnsInstall"][0] == 'NOT REMOVE~="ALL"'
    assert seq["PcnsUninstall"][0] == 'REMOVE~="ALL" AND NOT UPGRADINGPRODUCTCODE'
    assert seq["InstallInitialize"][1] < seq["RemoveExistingProducts"][1] < seq["RemoveFiles"][1]

    controls = msiinfo_export(msi, "ServiceControl")
    assert [c[1:3] for c in controls] == [["pcns-sender", str(0x2 | 0x20)]]  # stop on both


def arp_versions(box: Box) -> list[str]:
    """DisplayVersion of every installed product named like ours (Add/Remove Programs)."""
    result = box.run("reg", "query", UNINSTALL_KEY, "/s")
    versions: list[str] = []
    name = None
    for line in result.stdout.splitlines():
        if line.startswith("HKEY_"):
            name = None
        parts = line.strip().split(None, 2)
        if len(parts) == 3 and parts[0] == "DisplayName":
            name = parts[2]
        if len(parts) == 3 and parts[0] == "DisplayVersion" and name == PRODUCT_NAME:
            versions.append(parts[2])
    return versions


@pytest.mark.timeout(600)
def test_msiexec_installs_and_removes_everything(clean: Box, tmp_path: Path) -> None:
    """msiexec /i ... /qn places the files and its custom action registers pcnsflt and the service
    pointing into Program Files; msiexec /x undoes all of it."""
    msi = Wine.to_windows_path(msi_path(clean.build))
    program_files = clean.wine.drive_c / "Program Files" / "pcns"

    inside = msi_files(msi_path(clean.build), tmp_path / "extracted")
    assert sorted(inside) == ["pcns/README.md", "pcns/pcns-sender.exe", "pcnsflt.dll"]

    ok(clean.run("msiexec", "/i", msi, "/qn", timeout=300))
    assert (clean.system32 / "pcnsflt.dll").read_bytes() == inside["pcnsflt.dll"]
    assert (program_files / "pcns-sender.exe").read_bytes() == inside["pcns/pcns-sender.exe"]
    assert (program_files / "README.md").read_bytes() == inside["pcns/README.md"]
    assert clean.packages_raw() == multi_sz(["scecli", "rassfm", "pcnsflt"])
    image = clean.wine.reg_query(SERVICE_KEY, "ImagePath")
    assert image == r'"C:\Program Files\pcns\pcns-sender.exe" service'
    assert clean.export(EVENT_KEY) is not None
    assert (clean.spool / "bad").is_dir()
    assert arp_versions(clean) == [project_version()]

    ok(clean.run("msiexec", "/x", msi, "/qn", timeout=300))
    assert not (clean.system32 / "pcnsflt.dll").exists()
    assert not program_files.exists()
    assert clean.packages_raw() == multi_sz(["scecli", "rassfm"])
    assert clean.export(SERVICE_KEY) is None
    assert clean.export(EVENT_KEY) is None
    assert arp_versions(clean) == []


@pytest.mark.timeout(600)
def test_msi_major_upgrade_leaves_one_product_and_pcnsflt_listed_once(
    clean: Box, tmp_path: Path
) -> None:
    """Installing a newer MSI over an older one leaves only the newer product, pcnsflt listed once
    and the service in place (Wine's msi removes the old product without UPGRADINGPRODUCTCODE,
    so there its uninstall action runs and the new install redoes everything)."""
    if shutil.which("wixl") is None:
        missing("wixl missing (apt-get install wixl)")
    newer = bumped(project_version())
    upgrade = tmp_path / f"pcns-windows-{newer}.msi"
    with tempfile.TemporaryFile() as out:
        built = subprocess.run(
            ["wixl", "-a", "x64", "-D", f"Version={newer}", "-D", "BuildDir=build", "-D",
             "DocDir=../deploy/windows", "-o", str(upgrade), "installer/pcns.wxs"],
            cwd=WINDOWS, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False,
        )  # fmt: skip
        out.seek(0)
        assert built.returncode == 0, out.read().decode(errors="replace")

    ok(clean.run("msiexec", "/i", Wine.to_windows_path(msi_path(clean.build)), "/qn", timeout=300))
    ok(clean.run("msiexec", "/i", Wine.to_windows_path(upgrade), "/qn", timeout=300))
    try:
        assert arp_versions(clean) == [newer]
        assert clean.packages_raw() == multi_sz(["scecli", "rassfm", "pcnsflt"])
        assert clean.wine.reg_query(SERVICE_KEY, "ImagePath") == (
            r'"C:\Program Files\pcns\pcns-sender.exe" service'
        )
        assert (clean.system32 / "pcnsflt.dll").is_file()
    finally:
        ok(clean.run("msiexec", "/x", Wine.to_windows_path(upgrade), "/qn", timeout=300))
    assert arp_versions(clean) == []
    assert clean.packages_raw() == multi_sz(["scecli", "rassfm"])
