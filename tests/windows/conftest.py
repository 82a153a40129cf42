"""Session fixtures for the Windows side: the mingw build and a Wine 10 prefix to run it in.

``windows_build`` runs ``make -C windows`` once and returns ``windows/build``. ``wine`` is a
:class:`Wine`: a fresh prefix for the session under a temporary directory, driven through
``windows/tools/wine10`` (the Debian 13 root with Wine 10 that ``windows/tools/wine10-root``
makes). Both skip with the reason when the toolchain or the root is missing, and fail instead
when ``PCNS_REQUIRE_TOOLS=1`` (CI).

    result = wine.run([build / "tests" / "harness.exe", ...], timeout=60, env={...})
    proc = wine.start([build / "pcns-sender.exe", "run"]); ...; proc.stop()
    wine.reg_add(PCNS_SENDER_KEY, "Source", "REG_SZ", "dc01"); wine.reg_query(...)
    wine.to_windows_path(tmp_path)        # Z: + the path, backslashes

Wine's output always goes to files, never to pipes: its helper processes inherit the pipe and
keep it open, so a reader would hang. Wine keeps no event log: run a program with
``env={"WINEDEBUG": EVENTLOG_DEBUG}`` and read its events with ``reported_events(stderr)``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WINDOWS = REPO / "windows"
BUILD = WINDOWS / "build"
WINE10 = WINDOWS / "tools" / "wine10"
WINE_ROOT = Path(os.environ.get("PCNS_WINE_ROOT", "/var/cache/pcns/wine10-root"))
PCNS_SENDER_KEY = r"HKLM\SOFTWARE\pcns\Sender"

BUILD_TOOLS = ("x86_64-w64-mingw32-gcc", "clang", "ld.lld", "make")

# Wine stores no events; with this WINEDEBUG it prints each ReportEventW (id, type) and its
# strings to stderr, which reported_events() reads back.
EVENTLOG_DEBUG = "fixme+advapi,err+eventlog,warn+eventlog,trace+eventlog"
_REPORT_CALL = re.compile(
    r"fixme:advapi:ReportEventW \((?P<handle>[0-9A-Fa-f]+),0x(?P<type>[0-9a-f]+),"
    r"0x[0-9a-f]+,0x(?P<id>[0-9a-f]+),"
)
_REPORT_TEXT = re.compile(r':eventlog:ReportEventW L"(?P<text>(?:[^"\\]|\\.)*)"')


def tools_required() -> bool:
    """True when missing tools must fail the run instead of skipping (CI)."""
    return os.environ.get("PCNS_REQUIRE_TOOLS") == "1"


def missing(reason: str) -> None:
    """Skip with ``reason``, or fail with it under ``PCNS_REQUIRE_TOOLS=1``."""
    if tools_required():
        pytest.fail(f"{reason} (PCNS_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class ReportedEvent:
    """One ReportEventW call seen in Wine's debug output (Wine truncates long strings)."""

    event_id: int
    event_type: int  # EVENTLOG_ERROR_TYPE 1, EVENTLOG_WARNING_TYPE 2, EVENTLOG_INFORMATION_TYPE 4
    strings: tuple[str, ...]


def _unescape_debugstr(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x" and i + 6 <= len(text):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def reported_events(stderr: str) -> list[ReportedEvent]:
    """The events a program reported, from its stderr under ``WINEDEBUG=EVENTLOG_DEBUG``."""
    events: list[ReportedEvent] = []
    pending: tuple[int, int] | None = None
    strings: list[str] = []
    for line in stderr.splitlines():
        call = _REPORT_CALL.search(line)
        if call:
            if pending is not None:
                events.append(ReportedEvent(pending[0], pending[1], tuple(strings)))
            pending = (int(call["id"], 16) & 0xFFFF, int(call["type"], 16))
            strings = []
            continue
        text = _REPORT_TEXT.search(line)
        if text and pending is not None:
            strings.append(_unescape_debugstr(text["text"]))
    if pending is not None:
        events.append(ReportedEvent(pending[0], pending[1], tuple(strings)))
    return events


@pytest.fixture(scope="session")
def windows_build() -> Path:
    """``windows/build`` after one ``make -C windows`` for the session."""
    absent = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if absent:
        missing("Windows toolchain missing: " + ", ".join(absent))
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(
            ["make", "-C", str(WINDOWS), f"-j{os.cpu_count() or 2}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=600,
            check=False,
        )
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"make -C windows failed ({proc.returncode}):\n{text[-6000:]}", pytrace=False)
    return BUILD


@dataclass(frozen=True)
class WineResult:
    """A finished Windows program: exit code and what it wrote (decoded as UTF-8)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def stdout_text(self) -> str:
        return self.stdout

    @property
    def stderr_text(self) -> str:
        return self.stderr


class WineProcess:
    """A Windows program started with :meth:`Wine.start`; output goes to two files."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> None:
        self.popen = popen
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to the program's process group, SIGKILL after ``timeout``; the exit code."""
        if self.popen.poll() is None:
            _signal_group(self.popen, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        return self.popen.returncode


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)


class Wine:
    """One Wine prefix for the session, driven through ``windows/tools/wine10``.

    ``run``/``start`` take the Windows program and its arguments as wine64 does (a Windows or
    Unix path of an .exe, or a builtin such as ``reg``); ``env`` adds variables for the program.
    """

    def __init__(self, prefix: Path, scratch: Path) -> None:
        self.prefix = prefix
        self.scratch = scratch
        self._count = 0

    @property
    def drive_c(self) -> Path:
        return self.prefix / "drive_c"

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        extra = dict(env or {})
        names = [name for name in extra if name not in ("WINEDEBUG", "WINEDLLOVERRIDES", "LANG")]
        base = {k: v for k, v in os.environ.items() if not k.startswith("WINE")}
        base.pop("DISPLAY", None)
        return {
            **base,
            **extra,
            "WINEPREFIX": str(self.prefix),
            "PCNS_WINE_ROOT": str(WINE_ROOT),
            "PCNS_WINE_BIND": str(self.scratch),
            "PCNS_WINE_PASSENV": " ".join(names),
        }

    def _outputs(self) -> tuple[Path, Path]:
        self._count += 1
        base = self.scratch / "out" / f"{self._count:05d}"
        base.parent.mkdir(parents=True, exist_ok=True)
        return base.with_suffix(".stdout"), base.with_suffix(".stderr")

    def _popen(
        self,
        command: Sequence[str],
        cwd: Path | str | None,
        env: Mapping[str, str] | None,
        stdout: Path,
        stderr: Path,
    ) -> subprocess.Popen[bytes]:
        with stdout.open("wb") as out, stderr.open("wb") as err:
            return subprocess.Popen(
                [str(WINE10), *command],
                cwd=cwd,
                env=self._env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> WineResult:
        """Run a Windows program to its end (killed and failed after ``timeout`` seconds)."""
        stdout, stderr = self._outputs()
        popen = self._popen([str(a) for a in args], cwd, env, stdout, stderr)
        try:
            code = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(popen, signal.SIGKILL)
            popen.wait(timeout=30)
            pytest.fail(
                f"wine {list(args)} still running after {timeout} s; stderr:\n"
                + stderr.read_text(errors="replace")[-4000:],
                pytrace=False,
            )
        return WineResult(
            code,
            stdout.read_text(encoding="utf-8", errors="replace"),
            stderr.read_text(encoding="utf-8", errors="replace"),
        )

    def start(
        self,
        args: Sequence[str],
        *,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> WineProcess:
        """Start a long-running Windows program (e.g. the sender in console mode); ``stop()`` it."""
        stdout, stderr = self._outputs()
        return WineProcess(
            self._popen([str(a) for a in args], cwd, env, stdout, stderr), stdout, stderr
        )

    def server(self, *args: str, timeout: float = 60) -> int:
        """Run this prefix's wineserver with ``args`` (``-k`` kills it, ``-w`` waits for it)."""
        stdout, stderr = self._outputs()
        popen = self._popen(["--server", *args], None, None, stdout, stderr)
        try:
            return popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(popen, signal.SIGKILL)
            return popen.wait(timeout=30)

    @staticmethod
    def to_windows_path(path: Path | str) -> str:
        """The Windows path of a Unix path (Wine maps Z: to /)."""
        return "Z:" + str(Path(path).resolve()).replace("/", "\\")

    def reg_add(self, key: str, name: str, kind: str, data: str | bytes | int) -> None:
        """``reg add KEY /v NAME /t KIND /d DATA /f``; bytes are written as hex (REG_BINARY)."""
        if isinstance(data, bytes):
            value = data.hex()
        elif isinstance(data, int):
            value = str(data)
        else:
            value = data
        result = self.run(
            ["reg", "add", key, "/v", name, "/t", kind, "/d", value, "/f"], timeout=60
        )
        assert result.returncode == 0, f"reg add {key} {name} failed: {result}"

    def reg_query(self, key: str, name: str) -> str | None:
        """The value's data as ``reg query`` prints it (hex for REG_BINARY), None when absent."""
        result = self.run(["reg", "query", key, "/v", name], timeout=60)
        if result.returncode != 0:
            return None
        for line in result.stdout.splitlines():
            parts = line.strip().split(None, 2)
            if len(parts) >= 2 and parts[0].lower() == name.lower() and parts[1].startswith("REG_"):
                return parts[2] if len(parts) == 3 else ""
        return None

    def reg_delete(self, key: str, name: str | None = None) -> None:
        """``reg delete KEY [/v NAME] /f``; absent keys or values are fine."""
        args = ["reg", "delete", key, *(["/v", name] if name is not None else []), "/f"]
        self.run(args, timeout=60)


def booted(scratch: Path) -> Wine:
    """A new prefix under ``scratch``, booted, with one persistent wineserver.

    The server is bounded (``-p300``) so a killed session does not leave it forever. wineboot
    --init on a new prefix leaves two services.exe running, each with its own service table
    (`sc create` reaches one, `net start` the other); a fresh server after the boot starts one.
    """
    wine = Wine(scratch / "prefix", scratch)
    wine.server("-p300")
    boot = wine.run(["wineboot", "--init"], timeout=300)
    if boot.returncode != 0:
        pytest.fail(f"wineboot --init failed: {boot}", pytrace=False)
    wine.server("-k")
    wine.server("-w", timeout=60)
    wine.server("-p300")
    return wine


@pytest.fixture(scope="session")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wine]:
    """A fresh Wine 10 prefix for the session (wineboot --init once, wineserver -k at the end)."""
    if not (WINE_ROOT / ".pcns-ready").is_file():
        missing(f"no Wine 10 root at {WINE_ROOT} (make it with windows/tools/wine10-root)")
    if os.geteuid() != 0:
        missing("running Wine 10 in its root needs root (unshare -m, chroot)")
    wine = booted(tmp_path_factory.mktemp("wine"))
    try:
        yield wine
    finally:
        wine.server("-k")
        wine.server("-w", timeout=30)
        shutil.rmtree(wine.prefix, ignore_errors=True)
