"""The password-hashing registry every adapter uses: one name per scheme, one place per library.

Hashing is CPU-bound and takes tens to hundreds of milliseconds by design, so adapters call
:func:`hash_password_async`, which runs :func:`hash_password` in a worker thread and keeps the
event loop free. Errors are :class:`~targets.base.PermanentError` (the password cannot be hashed
with this scheme, e.g. bcrypt's 72-byte limit) or :class:`~targets.base.TargetConfigError`
(``rounds`` out of range); their messages never contain the password.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import argon2
import bcrypt
from passlib import exc as passlib_exc
from passlib import hash as passlib_hash

from targets.base import Password, PermanentError, TargetConfigError, off_the_clock

HashScheme = Literal[
    "argon2id",
    "bcrypt",
    "pbkdf2_sha256",
    "pbkdf2_sha512",
    "sha512_crypt",
    "apr1",
    "ssha",
    "ssha512",
]
HASH_SCHEMES: Final[tuple[HashScheme, ...]] = get_args(HashScheme)

BCRYPT_MAX_BYTES: Final = 72
BCRYPT_DEFAULT_COST: Final = 12

# OWASP Password Storage Cheat Sheet, argon2id second option: m=19 MiB, t=2, p=1.
ARGON2_TIME_COST: Final = 2
ARGON2_MEMORY_KIB: Final = 19 * 1024
ARGON2_PARALLELISM: Final = 1


@dataclass(frozen=True, slots=True)
class _Scheme:
    """How one scheme hashes and verifies; ``rounds_range`` is None when it takes no rounds."""

    hash: Callable[[str, int | None], str]
    verify: Callable[[str, str], bool]
    rounds_range: tuple[int, int] | None


def _utf8(password: str) -> bytes:
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError:
        # ``from None``: the UnicodeEncodeError carries the whole plaintext in ``.object``.
        raise PermanentError("password is not valid Unicode (lone surrogate)") from None


def _argon2_hasher(time_cost: int | None) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=time_cost or ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        type=argon2.Type.ID,
    )


def _argon2_hash(password: str, rounds: int | None) -> str:
    return _argon2_hasher(rounds).hash(_utf8(password))


def _argon2_verify(password: str, hashed: str) -> bool:
    if not hashed.startswith("$argon2id$"):
        raise ValueError("not a valid argon2id hash")
    try:
        return _argon2_hasher(None).verify(hashed, _utf8(password))
    except argon2.exceptions.VerifyMismatchError:
        return False
    except argon2.exceptions.InvalidHashError:
        raise ValueError("not a valid argon2id hash") from None


def _bcrypt_bytes(password: str) -> bytes:
    raw = _utf8(password)
    if len(raw) > BCRYPT_MAX_BYTES:
        # Never truncate: a truncated hash would accept any password sharing the first 72 bytes.
        # The length stays out of the reason: status readers need not learn it.
        raise PermanentError(
            f"bcrypt accepts at most {BCRYPT_MAX_BYTES} bytes of UTF-8 password; this one is longer"
        )
    if b"\0" in raw:
        # C implementations (crypt_blowfish, OpenBSD) stop at NUL, i.e. they truncate.
        raise PermanentError("bcrypt cannot hash a password containing a NUL character")
    return raw


def _bcrypt_hash(password: str, rounds: int | None) -> str:
    salt = bcrypt.gensalt(rounds or BCRYPT_DEFAULT_COST)
    return bcrypt.hashpw(_bcrypt_bytes(password), salt).decode("ascii")


def _bcrypt_verify(password: str, hashed: str) -> bool:
    try:
        raw = _bcrypt_bytes(password)
    except PermanentError:
        return False  # no bcrypt hash this registry made can match it
    try:
        return bcrypt.checkpw(raw, hashed.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValueError("not a valid bcrypt hash") from None


def _passlib_scheme(handler: Any, *, rounds_range: tuple[int, int] | None) -> _Scheme:
    """Wrap a passlib handler; passlib accepts ``str`` and hashes its UTF-8 encoding."""

    def hash_(password: str, rounds: int | None) -> str:
        _utf8(password)
        configured = handler.using(rounds=rounds) if rounds is not None else handler
        try:
            return str(configured.hash(password))
        except passlib_exc.PasswordSizeError as exc:
            raise PermanentError(
                f"{handler.name} accepts at most {exc.max_size} bytes of password"
            ) from None
        except passlib_exc.PasswordValueError:
            raise PermanentError(f"{handler.name} refused the password (NUL character)") from None

    def verify(password: str, hashed: str) -> bool:
        _utf8(password)
        try:
            return bool(handler.verify(password, hashed))
        except passlib_exc.PasswordValueError:
            return False
        except ValueError:
            raise ValueError(f"not a valid {handler.name} hash") from None

    return _Scheme(hash=hash_, verify=verify, rounds_range=rounds_range)


_SCHEMES: Final[dict[HashScheme, _Scheme]] = {
    "argon2id": _Scheme(_argon2_hash, _argon2_verify, rounds_range=(1, 2**32 - 1)),
    "bcrypt": _Scheme(_bcrypt_hash, _bcrypt_verify, rounds_range=(4, 31)),
    "pbkdf2_sha256": _passlib_scheme(passlib_hash.pbkdf2_sha256, rounds_range=(1, 2**32 - 1)),
    "pbkdf2_sha512": _passlib_scheme(passlib_hash.pbkdf2_sha512, rounds_range=(1, 2**32 - 1)),
    "sha512_crypt": _passlib_scheme(passlib_hash.sha512_crypt, rounds_range=(1000, 999_999_999)),
    "apr1": _passlib_scheme(passlib_hash.apr_md5_crypt, rounds_range=None),
    "ssha": _passlib_scheme(passlib_hash.ldap_salted_sha1, rounds_range=None),
    "ssha512": _passlib_scheme(passlib_hash.ldap_salted_sha512, rounds_range=None),
}


def _scheme(scheme: HashScheme) -> _Scheme:
    try:
        return _SCHEMES[scheme]
    except KeyError:
        raise TargetConfigError(f"hash: unknown scheme {scheme!r}") from None


def hash_password(scheme: HashScheme, password: Password, *, rounds: int | None = None) -> str:
    """Hash ``password`` with ``scheme``; ``rounds`` overrides the scheme's cost when it has one.

    ``rounds`` is bcrypt's cost, argon2id's time cost, or the iteration count of pbkdf2 and
    sha512_crypt. Blocks for as long as the scheme is meant to: call it off the event loop.
    """
    entry = _scheme(scheme)
    if rounds is not None:
        if entry.rounds_range is None:
            raise TargetConfigError(f"rounds: {scheme} takes no rounds")
        low, high = entry.rounds_range
        if not low <= rounds <= high:
            raise TargetConfigError(f"rounds: {scheme} needs rounds in {low}..{high}")
    return entry.hash(password.reveal(), rounds)


def _lower_priority() -> None:
    """Run hashing below the event loop: a receiver sharing the host keeps answering."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _HASH_NICE)


_HASH_NICE = 19  # the lowest priority: hashing waits, the receiver answers
# One pool per process, one thread per core but one: hashing is CPU-bound (argon2-cffi and bcrypt
# release the GIL), so more threads only add switching, and the spare core plus the lowest
# scheduling priority keep the receiver's event loop answering while a target hashes. It is
# process-wide like the CPU it stands for, hence a lazily created module-level pool.
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def hashing_threads() -> int:
    """All cores but one (at least one): the event loop keeps a core for the receiver."""
    return max(1, (os.cpu_count() or 1) - 1)


def hashing_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=hashing_threads(),
            thread_name_prefix="pcns-hash",
            initializer=_lower_priority,
        )
    return _pool


async def hash_password_async(
    scheme: HashScheme, password: Password, *, rounds: int | None = None
) -> str:
    """:func:`hash_password` in the hashing pool (all cores but one, at the lowest scheduling
    priority), so the event loop keeps serving."""
    call = functools.partial(hash_password, scheme, password, rounds=rounds)
    with off_the_clock():  # queueing for the pool and hashing are pcns's time, not the target's
        return await asyncio.get_running_loop().run_in_executor(hashing_pool(), call)


def verify_password(scheme: HashScheme, password: Password, hashed: str) -> bool:
    """Whether ``hashed`` (a ``scheme`` hash) was made from ``password``.

    Raises ValueError when ``hashed`` is not a hash of that scheme.
    """
    return _scheme(scheme).verify(password.reveal(), hashed)
