"""A script or program run once per change: the account in argv, the password on stdin only.

The executable is started directly (no shell) in a new session, with a small fixed environment
plus the configured ``env``; it never inherits the service's environment, which may hold
``PCNS_*`` secrets. The password, UTF-8 encoded and followed by one newline, is written to its
stdin, which is then closed; it is never put in argv or the environment, where any local user
could read it from ``/proc``. The exit status decides the outcome; stderr (its last lines, with
the password redacted, judged by :mod:`targets.redaction`) goes into the error reason. On
timeout or cancellation the whole process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
from pathlib import Path
from typing import ClassVar, Final, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from targets.base import Password, PermanentError, TargetSettings, TransientError
from targets.redaction import quotable, redact
from targets.templates import Template

Verdict = Literal["done", "permanent", "transient"]

DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# sysexits.h: EX_OSERR (71, e.g. cannot fork) and EX_TEMPFAIL (75) are worth retrying, as Postfix
# treats them; the other EX_* codes and the shells' usage errors (2) need a human.
DEFAULT_TRANSIENT: Final = (71, 75)
DEFAULT_PERMANENT: Final = (2, 3, *range(64, 71), *range(72, 75), *range(76, 79))
STDERR_KEEP: Final = 64 * 1024
EXCERPT_CHARS: Final = 300
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# errno values of a failed exec that a human has to fix; others (EAGAIN, ENOMEM) may clear up.
_PERMANENT_ERRNOS: Final = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOTDIR, errno.EISDIR}
)


def _account_template(text: str) -> Template:
    used = Template.parse(text, ("account", "password", "password_hash")).fields
    if used & {"password", "password_hash"}:
        raise ValueError("the password goes to stdin only, never into argv or env")
    return Template.parse(text, ("account",))


class CommandSettings(TargetSettings):
    """The program to run, its environment, its time limit and what its exit codes mean."""

    # env may carry static credentials for the script: keep raw input out of error messages.
    model_config = ConfigDict(hide_input_in_errors=True)

    argv: tuple[str, ...] = Field(min_length=1)
    timeout: float = Field(default=20.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path = Path("/")
    done: tuple[int, ...] = (0,)
    permanent: tuple[int, ...] = DEFAULT_PERMANENT
    transient: tuple[int, ...] = DEFAULT_TRANSIENT
    unlisted: Literal["permanent", "transient"] = "transient"

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not os.path.isabs(value[0]) or "{" in value[0] or "}" in value[0]:
            raise ValueError("argv[0] must be the executable's absolute path, without placeholders")
        for i, element in enumerate(value):
            if "\0" in element:
                raise ValueError(f"argv[{i}] contains NUL")
            try:
                _account_template(element)
            except ValueError as exc:
                raise ValueError(f"argv[{i}]: {exc}") from None
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if "\0" in template:
                raise ValueError(f"{name}: contains NUL")
            try:
                _account_template(template)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: Path) -> Path:
        if not value.is_absolute() or not value.is_dir():
            raise ValueError(f"{value} is not an existing directory given by absolute path")
        return value

    @field_validator("done", "permanent", "transient")
    @classmethod
    def _codes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [code for code in value if not 0 <= code <= 255]
        if bad:
            raise ValueError(f"exit codes are 0-255, not {bad}")
        return value

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        if not self.done:
            raise ValueError("done: list at least one exit code")
        self.exit_codes()
        return self

    def exit_codes(self) -> dict[int, Verdict]:
        """Exit code to verdict; ValueError when one code is listed under two verdicts."""
        table: dict[int, Verdict] = {}
        lists: tuple[tuple[Verdict, tuple[int, ...]], ...] = (
            ("done", self.done),
            ("permanent", self.permanent),
            ("transient", self.transient),
        )
        for verdict, codes in lists:
            for code in codes:
                if table.setdefault(code, verdict) != verdict:
                    raise ValueError(f"exit code {code} is in both {table[code]} and {verdict}")
        return table


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the program exited without reading; its exit status tells what happened
    finally:
        stdin.close()


async def _read_tail(stream: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The last :data:`STDERR_KEEP` bytes of ``stream``, and whether earlier ones were dropped."""
    kept = bytearray()
    overflowed = False
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > STDERR_KEEP:
            del kept[:-STDERR_KEEP]
            overflowed = True
    return bytes(kept), overflowed


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # The child leads its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class CommandTarget:
    """Runs a program per change, handing it the password on stdin (never argv or environment)."""

    settings_model: ClassVar[type[TargetSettings]] = CommandSettings

    def __init__(self, name: str, settings: CommandSettings) -> None:
        self.name = name
        self._settings = settings
        self._argv = tuple(_account_template(element) for element in settings.argv)
        self._env = {key: _account_template(value) for key, value in settings.env.items()}
        self._exit_codes = settings.exit_codes()
        # An element that starts with the account would read as an option if the account
        # started with '-', unless a '--' before it ends the options.
        first_dashdash = settings.argv.index("--") if "--" in settings.argv else len(settings.argv)
        self._option_like = any(
            template.parts[0] == ("", "account") and i < first_dashdash
            for i, template in enumerate(self._argv)
            if template.parts
        )

    def __repr__(self) -> str:
        return f"CommandTarget(name={self.name!r}, executable={self._settings.argv[0]!r})"

    def _check_account(self, account: str) -> None:
        if "\0" in account:
            raise PermanentError("account contains NUL; it cannot be passed to a program")
        if self._option_like and account.startswith("-"):
            raise PermanentError(
                "account starts with '-' and would be read as an option; put '--' in argv"
            )

    async def set_password(self, account: str, password: Password) -> None:
        """Run the program for ``account`` and write ``password`` and a newline to its stdin."""
        self._check_account(account)
        plaintext = password.reveal()
        if any(c in plaintext for c in "\r\n\0"):
            raise PermanentError("password contains a line break or NUL; stdin carries one line")
        try:
            line = plaintext.encode("utf-8") + b"\n"
        except UnicodeEncodeError:
            raise PermanentError("password is not valid Unicode (lone surrogate)") from None
        returncode, stderr, cut = await self._run(account, line)
        # Exact echoes are cut out; what is left is quoted unless it still repeats a piece.
        excerpt = quotable(
            redact(stderr, [plaintext]), [plaintext], EXCERPT_CHARS, keep="tail", truncated=cut
        )
        if excerpt is None:
            excerpt = "(stderr withheld: it repeats part of the password)"
        detail = f": {excerpt}" if excerpt else ""
        if returncode < 0:
            raise TransientError(f"command killed by {signal.Signals(-returncode).name}{detail}")
        verdict = self._exit_codes.get(returncode, self._settings.unlisted)
        if verdict == "done":
            return
        reason = f"command exited with status {returncode}{detail}"
        if verdict == "transient":
            raise TransientError(reason)
        raise PermanentError(reason)

    async def _run(self, account: str, stdin_data: bytes) -> tuple[int, bytes, bool]:
        """Exit status, the tail of stderr, and whether that tail was cut from a longer one."""
        settings = self._settings
        values = {"account": account}
        argv = [template.render(values) for template in self._argv]
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
        env.update((name, template.render(values)) for name, template in self._env.items())
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=settings.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            reason = f"cannot run {argv[0]}: {exc.strerror or type(exc).__name__}"
            if exc.errno in _PERMANENT_ERRNOS:
                raise PermanentError(reason) from exc
            raise TransientError(reason) from exc
        assert process.stdin is not None
        assert process.stderr is not None
        try:
            async with asyncio.timeout(settings.timeout):
                (stderr, cut), _ = await asyncio.gather(
                    _read_tail(process.stderr), _feed(process.stdin, stdin_data)
                )
                returncode = await process.wait()
        except TimeoutError:
            _kill_group(process)
            await process.wait()
            raise TransientError(
                f"command did not finish within {settings.timeout:g}s; its process group was killed"
            ) from None
        except BaseException:  # cancelled (service shutdown, attempt timeout): leave nothing behind
            _kill_group(process)
            await process.wait()
            raise
        return returncode, stderr, cut

    async def check(self) -> None:
        """The executable exists and may be executed; runs nothing."""
        await asyncio.to_thread(self._check_executable)

    def _check_executable(self) -> None:
        executable = Path(self._settings.argv[0])
        if not executable.is_file():
            raise PermanentError(f"{executable} does not exist or is not a file")
        if not os.access(executable, os.X_OK):
            raise PermanentError(f"{executable} is not executable")
        if not self._settings.cwd.is_dir():
            raise PermanentError(f"cwd {self._settings.cwd} is not a directory")

    async def close(self) -> None:
        """Nothing to release: every change runs and reaps its own process."""
