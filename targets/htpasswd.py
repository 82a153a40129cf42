"""Apache htpasswd files: replace or append one ``account:hash`` line, atomically.

A change hashes the password in a worker thread, then, holding an in-process lock and an
``fcntl.flock`` on the sibling ``<path>.lock`` (so other processes and ``htpasswd`` wrappers that
take the same lock wait), reads the file, rewrites one line, writes a temporary file in the same
directory, fsyncs it and renames it over the original. Readers see the old file or the new one,
never a half-written one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import ClassVar, Final, Literal

from pydantic import Field

from targets.base import Password, PermanentError, TargetSettings, TransientError
from targets.hashing import hash_password_async

NEW_FILE_MODE: Final = 0o640
# errno values a human has to fix (path, permissions, read-only mount); others (ENOSPC, EIO) may
# clear up by themselves, so the delivery is retried.
_PERMANENT_ERRNOS: Final = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
)


class HtpasswdSettings(TargetSettings):
    """Where the htpasswd file is and how its hashes are made."""

    path: Path
    hash: Literal["bcrypt", "sha512_crypt", "apr1"] = "bcrypt"
    bcrypt_cost: int = Field(default=12, ge=4, le=31)
    create: bool = True


def _check_account(account: str) -> None:
    if not account or any(c in account for c in ":\r\n\0"):
        raise PermanentError(
            "htpasswd account name must be non-empty and contain no ':', line break or NUL"
        )


def _os_error(action: str, exc: OSError) -> PermanentError | TransientError:
    reason = f"cannot {action}: {exc.strerror or type(exc).__name__}"
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentError(reason)
    return TransientError(reason)


def _replace_line(content: bytes, account: bytes, line: bytes) -> bytes:
    """``content`` with the first ``account:`` line replaced by ``line``, or ``line`` appended.

    Later lines for the same account are dropped: Apache uses the first match, and a stale
    duplicate would resurface the old password if the first line were ever removed.
    """
    out: list[bytes] = []
    replaced = False
    for old in content.splitlines(keepends=True):
        if old.split(b":", 1)[0] != account or b":" not in old:
            out.append(old)
        elif not replaced:
            ending = old[len(old.rstrip(b"\r\n")) :] or b"\n"
            out.append(line + ending)
            replaced = True
    if not replaced:
        if out and not out[-1].endswith(b"\n"):
            out[-1] += b"\n"
        out.append(line + b"\n")
    return b"".join(out)


def _write_atomically(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            if owner is not None:
                # Not root and not in the group: keep ours; the mode still applies.
                with contextlib.suppress(PermissionError):
                    os.fchown(tmp.fileno(), *owner)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class HtpasswdTarget:
    """Sets passwords in an Apache htpasswd file (bcrypt, sha512_crypt or apr1 hashes)."""

    settings_model: ClassVar[type[TargetSettings]] = HtpasswdSettings

    def __init__(self, name: str, settings: HtpasswdSettings) -> None:
        self.name = name
        self._settings = settings
        # One target owns one file: this lock keeps our own writers from queueing on flock in
        # worker threads, which would starve the thread pool that hashing also needs.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"HtpasswdTarget(name={self.name!r}, path={str(self._settings.path)!r})"

    async def set_password(self, account: str, password: Password) -> None:
        """Replace or add ``account``'s line with a fresh hash of ``password``."""
        _check_account(account)
        settings = self._settings
        rounds = settings.bcrypt_cost if settings.hash == "bcrypt" else None
        hashed = await hash_password_async(settings.hash, password, rounds=rounds)
        if settings.hash == "bcrypt":
            # Apache writes $2y$ and older apr-util builds only recognise that prefix; the
            # algorithm is identical to $2b$ for passwords up to 72 bytes.
            hashed = "$2y$" + hashed.removeprefix("$2b$")
        line = account.encode("utf-8") + b":" + hashed.encode("ascii")
        async with self._lock:
            await asyncio.to_thread(self._update_file, account.encode("utf-8"), line)

    def _update_file(self, account: bytes, line: bytes) -> None:
        path = Path(os.path.realpath(self._settings.path))  # rename onto the file, not a symlink
        lock_path = path.with_name(path.name + ".lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _os_error(f"open lock file {lock_path}", exc) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                content = path.read_bytes()
                info = os.stat(path)
                mode, owner = info.st_mode & 0o7777, (info.st_uid, info.st_gid)
            except FileNotFoundError:
                if not self._settings.create:
                    raise PermanentError(f"htpasswd file {path} does not exist") from None
                content, mode, owner = b"", NEW_FILE_MODE, None
            _write_atomically(path, _replace_line(content, account, line), mode, owner)
        except OSError as exc:
            raise _os_error(f"update htpasswd file {path}", exc) from exc
        finally:
            os.close(lock_fd)  # also releases the flock

    async def check(self) -> None:
        """The file's directory exists and is writable (and the file exists unless ``create``)."""
        await asyncio.to_thread(self._check_paths)

    def _check_paths(self) -> None:
        path = Path(os.path.realpath(self._settings.path))
        if not path.parent.is_dir():
            raise PermanentError(f"directory {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermanentError(f"directory {path.parent} is not writable")
        if not self._settings.create and not path.is_file():
            raise PermanentError(f"htpasswd file {path} does not exist")

    async def close(self) -> None:
        """Nothing to release: every change opens and closes its own files."""
