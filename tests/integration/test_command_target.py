"""The command adapter running real scripts; Apache's ``htpasswd -v`` checks what they stored."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from targets.base import Password, PermanentError, TransientError
from targets.command import CommandSettings, CommandTarget
from tests.support import eventually, htpasswd_verifies

UNICODE = "Пароль-密码-🔑-ß"
LONG = "aB3$" * 32  # 128 characters, 128 bytes
HTPASSWD = shutil.which("htpasswd")

needs_htpasswd = pytest.mark.skipif(
    HTPASSWD is None, reason="Apache htpasswd (Debian apache2-utils) is not installed"
)


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str], Path]:
    """Writes an executable ``/bin/sh`` script with the given body and returns its path."""
    counter = iter(range(1000))

    def write(body: str) -> Path:
        path = tmp_path / f"script{next(counter)}.sh"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    return write


def target(argv: list[str | Path], **settings: Any) -> CommandTarget:
    return CommandTarget(
        "app", CommandSettings.model_validate({"argv": [str(a) for a in argv], **settings})
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for an init that does not reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@needs_htpasswd
@pytest.mark.parametrize(
    ("password", "flags"), [("s3cret-Pa55", "-B -C 4"), (UNICODE, "-B -C 4"), (LONG, "-5")]
)
async def test_script_stores_password_that_htpasswd_verifies(
    tmp_path: Path, script: Callable[[str], Path], password: str, flags: str
) -> None:
    """A script running ``htpasswd -i`` gets the exact password on stdin; htpasswd -v agrees."""
    store = script(f'exec {HTPASSWD} -i {flags} "$HTFILE" "$1"\n')
    htfile = tmp_path / "users.htpasswd"
    htfile.write_text("")
    command = target([store, "{account}"], env={"HTFILE": str(htfile)})
    await command.set_password("łukasz", Password(password))
    assert htpasswd_verifies(htfile, "łukasz", password)
    assert not htpasswd_verifies(htfile, "łukasz", password[:-1])
    assert password not in htfile.read_text()
    await command.check()
    await command.close()


async def test_password_is_in_neither_cmdline_nor_environ_of_the_running_child(
    tmp_path: Path, script: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the child runs, /proc/<pid>/cmdline and environ hold the account but no password,
    and none of the service's own environment; the child did receive the password on stdin."""
    monkeypatch.setenv("PCNS_DATABASE__URL", "postgresql://svc:db-Secret@db/pcns")
    password = "Sentinel-" + UNICODE
    pidfile, go, out = tmp_path / "pid", tmp_path / "go", tmp_path / "out"
    child = script(
        'IFS= read -r pw\nprintf "%s" "$pw" > "$OUT"\necho $$ > "$PIDFILE.tmp"\n'
        'mv "$PIDFILE.tmp" "$PIDFILE"\nwhile [ ! -e "$GO" ]; do sleep 0.05; done\n'
    )
    command = target(
        [child, "--user", "{account}"],
        env={"APP_USER": "{account}", "OUT": str(out), "PIDFILE": str(pidfile), "GO": str(go)},
        timeout=60,
    )
    running = asyncio.create_task(command.set_password("alice", Password(password)))
    try:

        async def child_pid() -> int | None:
            return int(pidfile.read_text()) if pidfile.exists() else None

        pid = await eventually(child_pid, timeout=20)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # noqa: ASYNC240
        environ = Path(f"/proc/{pid}/environ").read_bytes()  # noqa: ASYNC240
        assert str(child).encode() in cmdline  # the right process
        assert cmdline.split(b"\0")[-3:-1] == [b"--user", b"alice"]
        assert b"APP_USER=alice" in environ.split(b"\0")
        for needle in (password.encode(), b"Sentinel", UNICODE.encode(), b"db-Secret", b"PCNS_"):
            assert needle not in cmdline
            assert needle not in environ
    finally:
        go.touch()
        await running
    assert out.read_text() == password


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0, None),
        (2, PermanentError),
        (3, PermanentError),
        (64, PermanentError),
        (65, PermanentError),
        (67, PermanentError),
        (69, PermanentError),
        (70, PermanentError),
        (77, PermanentError),
        (78, PermanentError),
        (71, TransientError),
        (75, TransientError),
        (1, TransientError),
        (4, TransientError),
        (99, TransientError),
    ],
)
async def test_default_exit_code_mapping(
    script: Callable[[str], Path], code: int, outcome: type[Exception] | None
) -> None:
    """0 is done; 2, 3 and sysexits are permanent except 71 and 75; unlisted codes transient."""
    exits = script('echo "failing on purpose with $CODE" >&2\nexit "$CODE"\n')
    command = target([exits], env={"CODE": str(code)})
    if outcome is None:
        await command.set_password("alice", Password("pw"))
        return
    with pytest.raises(outcome) as failed:
        await command.set_password("alice", Password("pw"))
    assert str(failed.value) == f"command exited with status {code}: failing on purpose with {code}"


async def test_configured_exit_codes(script: Callable[[str], Path]) -> None:
    """done, permanent, transient and unlisted replace the defaults."""
    exits = script('cat > /dev/null\nexit "$CODE"\n')
    settings = {"done": [0, 10], "permanent": [75], "transient": [3], "unlisted": "permanent"}
    for code, outcome in [
        (10, None),
        (75, PermanentError),
        (3, TransientError),
        (1, PermanentError),
    ]:
        command = target([exits], env={"CODE": str(code)}, **settings)
        if outcome is None:
            await command.set_password("alice", Password("pw"))
        else:
            with pytest.raises(outcome):
                await command.set_password("alice", Password("pw"))


async def test_killed_by_signal_is_transient(script: Callable[[str], Path]) -> None:
    """A child that dies of a signal (the OOM killer, say) is retried."""
    dies = script("cat > /dev/null\nkill -KILL $$\n")
    with pytest.raises(TransientError, match="killed by SIGKILL"):
        await target([dies]).set_password("alice", Password("pw"))


async def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, script: Callable[[str], Path]
) -> None:
    """Past ``timeout`` the delivery is transient and the child and its own children are gone."""
    pids = tmp_path / "pids"
    hangs = script('echo $$ > "$PIDS"\nsleep 300 &\necho $! >> "$PIDS"\nwait\n')
    with pytest.raises(TransientError, match="did not finish within 1s"):
        await target([hangs], env={"PIDS": str(pids)}, timeout=1).set_password(
            "alice", Password("pw")
        )
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 2

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in started)

    await eventually(all_gone, timeout=10)


async def test_cancellation_kills_the_child(tmp_path: Path, script: Callable[[str], Path]) -> None:
    """A cancelled delivery (service shutdown, attempt timeout) leaves no process behind."""
    pids = tmp_path / "pids"
    hangs = script('echo $$ > "$PIDS"\nexec sleep 300\n')
    running = asyncio.create_task(
        target([hangs], env={"PIDS": str(pids)}).set_password("alice", Password("pw"))
    )

    async def started() -> int | None:
        text = pids.read_text() if pids.exists() else ""
        return int(text) if text.strip() else None

    pid = await eventually(started, timeout=20)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not alive(pid)


async def test_stderr_is_quoted_without_the_password(script: Callable[[str], Path]) -> None:
    """The reason carries the end of stderr on one line, with the password redacted."""
    password = "Sentinel-" + UNICODE
    rejects = script(
        'IFS= read -r pw\necho "starting" >&2\n'
        'echo "policy: $pw is too common;" >&2\necho "  try again" >&2\nexit 65\n'
    )
    with pytest.raises(PermanentError) as refused:
        await target([rejects]).set_password("alice", Password(password))
    assert refused.value.reason == (
        "command exited with status 65: starting policy: [redacted] is too common; try again"
    )


async def test_stderr_repeating_part_of_the_password_is_withheld(
    script: Callable[[str], Path],
) -> None:
    """Stderr that quotes a piece of the password (here its first five characters) is left out
    of the reason entirely; the exit status still decides."""
    password = "Sentinel-" + UNICODE
    rejects = script(
        'IFS= read -r pw\nstart=$(printf %s "$pw" | cut -c1-5)\n'
        'echo "policy: $start... is too common" >&2\nexit 65\n'
    )
    with pytest.raises(PermanentError) as refused:
        await target([rejects]).set_password("alice", Password(password))
    assert refused.value.reason == (
        "command exited with status 65: (stderr withheld: it repeats part of the password)"
    )


async def test_long_stderr_keeps_only_its_tail(script: Callable[[str], Path]) -> None:
    """Megabytes on stderr are drained, and only the last 300 characters are quoted."""
    noisy = script(
        "cat > /dev/null\nhead -c 3000000 /dev/zero | tr '\\0' 'x' >&2\n"
        'echo "" >&2\necho "the real error" >&2\nexit 70\n'
    )
    with pytest.raises(PermanentError) as refused:
        await target([noisy]).set_password("alice", Password("pw"))
    assert refused.value.reason.endswith("the real error")
    assert len(refused.value.reason) < 400


async def test_program_that_ignores_stdin_still_decides_by_exit_code(
    script: Callable[[str], Path],
) -> None:
    """A child that exits without reading stdin is judged by its exit status alone."""
    await target([script("exit 0\n")]).set_password("alice", Password(LONG * 1000))


@pytest.mark.parametrize("password", ["two\nlines", "cr\rhere", "nul\0byte"])
async def test_password_that_is_not_one_line_is_permanent(
    tmp_path: Path, script: Callable[[str], Path], password: str
) -> None:
    """stdin carries one line, so a password with a line break or NUL is refused, not cut."""
    marker = tmp_path / "ran"
    ran = script(f"touch {marker}\n")
    with pytest.raises(PermanentError, match="line break or NUL"):
        await target([ran]).set_password("alice", Password(password))
    assert not marker.exists()


async def test_option_like_account_is_refused_unless_after_dashdash(
    tmp_path: Path, script: Callable[[str], Path]
) -> None:
    """An account starting with '-' cannot become an option; after '--' it is passed as is."""
    out = tmp_path / "args"
    records = script('cat > /dev/null\nprintf "%s\\n" "$@" > "$OUT"\n')
    with pytest.raises(PermanentError, match="read as an option"):
        await target([records, "{account}"], env={"OUT": str(out)}).set_password(
            "-D", Password("pw")
        )
    assert not out.exists()
    await target([records, "--", "{account}"], env={"OUT": str(out)}).set_password(
        "-D", Password("pw")
    )
    assert out.read_text() == "--\n-D\n"


async def test_missing_or_not_executable_program_is_permanent(tmp_path: Path) -> None:
    """check() and set_password() refuse a program that is missing or lacks the x bit."""
    missing = target([tmp_path / "missing.sh"])
    with pytest.raises(PermanentError, match="does not exist"):
        await missing.check()
    with pytest.raises(PermanentError, match="cannot run"):
        await missing.set_password("alice", Password("pw"))

    plain_file = tmp_path / "plain.sh"
    plain_file.write_text("#!/bin/sh\nexit 0\n")
    not_executable = target([plain_file])
    with pytest.raises(PermanentError, match="not executable"):
        await not_executable.check()
    with pytest.raises(PermanentError, match="Permission denied"):
        await not_executable.set_password("alice", Password("pw"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"argv": ["relative.sh"]}, r"argv\n.*absolute path"),
        ({"argv": ["/bin/{account}"]}, r"argv\n.*absolute path"),
        ({"argv": ["/bin/true", "{password}"]}, r"argv\n.*stdin only"),
        ({"argv": ["/bin/true", "{user}"]}, r"argv\n.*not allowed"),
        ({"argv": []}, r"argv\n"),
        ({"env": {"PW": "{password}"}}, r"env\n.*stdin only"),
        ({"env": {"BAD-NAME": "x"}}, r"env\n.*not a valid"),
        ({"cwd": "/nonexistent"}, r"cwd\n"),
        ({"permanent": [0]}, r"exit code 0 is in both done and permanent"),
        ({"transient": [256]}, r"transient\n.*0-255"),
        ({"shell": True}, r"shell"),
    ],
)
def test_settings_refuse_bad_configuration(settings: dict[str, Any], message: str) -> None:
    """Password placeholders outside stdin, relative programs and clashing codes are refused."""
    with pytest.raises(ValidationError, match=message):
        CommandSettings.model_validate({"argv": ["/bin/true"], **settings})


def test_repr_names_only_the_program() -> None:
    """The target's repr shows its name and program, not its environment."""
    command = target(["/bin/true"], env={"API_KEY": "Sentinel-key"})
    assert repr(command) == "CommandTarget(name='app', executable='/bin/true')"
