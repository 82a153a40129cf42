"""The password-hashing registry: every scheme round-trips, limits are refused, never leaked."""

from __future__ import annotations

import asyncio

import pytest

from targets.base import Password, PermanentError, TargetConfigError
from targets.hashing import (
    HASH_SCHEMES,
    HashScheme,
    hash_password,
    hash_password_async,
    verify_password,
)

UNICODE = "Пароль-密码-🔑-ß"
LONG = "aB3$" * 32  # 128 characters, 128 bytes
# Fast costs keep the suite quick; the defaults are exercised once each below.
FAST_ROUNDS: dict[HashScheme, int | None] = {
    "argon2id": 1,
    "bcrypt": 4,
    "pbkdf2_sha256": 1000,
    "pbkdf2_sha512": 1000,
    "sha512_crypt": 1000,
    "apr1": None,
    "ssha": None,
    "ssha512": None,
}
PREFIXES: dict[HashScheme, str] = {
    "argon2id": "$argon2id$",
    "bcrypt": "$2b$",
    "pbkdf2_sha256": "$pbkdf2-sha256$",
    "pbkdf2_sha512": "$pbkdf2-sha512$",
    "sha512_crypt": "$6$",
    "apr1": "$apr1$",
    "ssha": "{SSHA}",
    "ssha512": "{SSHA512}",
}


def test_registry_lists_every_scheme() -> None:
    """The registry offers exactly the eight documented schemes."""
    assert set(HASH_SCHEMES) == set(PREFIXES)


@pytest.mark.parametrize("scheme", HASH_SCHEMES)
def test_hash_verifies_right_password_and_rejects_wrong(scheme: HashScheme) -> None:
    """A hash verifies against its password, not against another one, in the scheme's format."""
    hashed = hash_password(scheme, Password("correct horse"), rounds=FAST_ROUNDS[scheme])
    assert hashed.startswith(PREFIXES[scheme])
    assert "correct horse" not in hashed
    assert verify_password(scheme, Password("correct horse"), hashed)
    assert not verify_password(scheme, Password("correct horsE"), hashed)


@pytest.mark.parametrize("scheme", HASH_SCHEMES)
def test_same_password_hashes_differently_each_time(scheme: HashScheme) -> None:
    """Every hash is salted, so hashing one password twice gives two different strings."""
    first = hash_password(scheme, Password("pw"), rounds=FAST_ROUNDS[scheme])
    second = hash_password(scheme, Password("pw"), rounds=FAST_ROUNDS[scheme])
    assert first != second


@pytest.mark.parametrize("scheme", HASH_SCHEMES)
def test_unicode_password_round_trips(scheme: HashScheme) -> None:
    """A password of Cyrillic, CJK, an emoji and ß verifies; its ASCII-folded twin does not."""
    hashed = hash_password(scheme, Password(UNICODE), rounds=FAST_ROUNDS[scheme])
    assert verify_password(scheme, Password(UNICODE), hashed)
    assert not verify_password(scheme, Password("Пароль-密码-🔑-ss"), hashed)


@pytest.mark.parametrize("scheme", [s for s in HASH_SCHEMES if s != "bcrypt"])
def test_128_character_password_is_hashed_whole(scheme: HashScheme) -> None:
    """A 128-character password verifies, and changing only its last character fails."""
    hashed = hash_password(scheme, Password(LONG), rounds=FAST_ROUNDS[scheme])
    assert verify_password(scheme, Password(LONG), hashed)
    assert not verify_password(scheme, Password(LONG[:-1] + "!"), hashed)


def test_bcrypt_accepts_exactly_72_bytes() -> None:
    """bcrypt takes a 72-byte password and tells it apart from one differing in byte 72."""
    password = "x" * 71 + "y"
    hashed = hash_password("bcrypt", Password(password), rounds=4)
    assert verify_password("bcrypt", Password(password), hashed)
    assert not verify_password("bcrypt", Password("x" * 72), hashed)


@pytest.mark.parametrize("password", ["x" * 73, "ß" * 37, LONG])
def test_bcrypt_refuses_more_than_72_bytes(password: str) -> None:
    """bcrypt refuses a password over 72 UTF-8 bytes, naming the limit, rather than truncating."""
    with pytest.raises(PermanentError, match="72 bytes") as caught:
        hash_password("bcrypt", Password(password), rounds=4)
    assert password not in str(caught.value)


def test_bcrypt_refuses_nul_character() -> None:
    """bcrypt refuses a NUL character, which C implementations would treat as the end."""
    with pytest.raises(PermanentError, match="NUL"):
        hash_password("bcrypt", Password("abc\0def"), rounds=4)


def test_lone_surrogate_is_refused_without_echoing() -> None:
    """A string that is not valid Unicode is refused and the error does not carry it."""
    with pytest.raises(PermanentError, match="Unicode") as caught:
        hash_password("pbkdf2_sha256", Password("secret\ud800"), rounds=1000)
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    ("scheme", "rounds"), [("bcrypt", 3), ("bcrypt", 32), ("sha512_crypt", 999), ("apr1", 10)]
)
def test_out_of_range_rounds_are_a_config_error(scheme: HashScheme, rounds: int) -> None:
    """Rounds a scheme cannot take are a configuration error naming ``rounds``."""
    with pytest.raises(TargetConfigError, match="rounds"):
        hash_password(scheme, Password("pw"), rounds=rounds)


def test_rounds_reach_the_hash() -> None:
    """The rounds argument is the cost written into the hash."""
    assert hash_password("bcrypt", Password("pw"), rounds=5).startswith("$2b$05$")
    assert "$rounds=2000$" in hash_password("sha512_crypt", Password("pw"), rounds=2000)


def test_argon2id_defaults_follow_owasp() -> None:
    """argon2id by default uses 19 MiB of memory, two passes and one lane."""
    hashed = hash_password("argon2id", Password("pw"))
    assert "$m=19456,t=2,p=1$" in hashed


def test_bcrypt_default_cost_is_12() -> None:
    """bcrypt by default uses cost 12."""
    assert hash_password("bcrypt", Password("pw")).startswith("$2b$12$")


def test_verify_rejects_a_hash_of_another_scheme() -> None:
    """Verifying against a hash of a different scheme is an error, not a silent match."""
    hashed = hash_password("apr1", Password("pw"))
    with pytest.raises(ValueError, match="argon2id"):
        verify_password("argon2id", Password("pw"), hashed)


async def test_async_hashing_leaves_the_event_loop_serving() -> None:
    """Other tasks keep running while the async variant hashes, and its hash verifies."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    hashed = await hash_password_async("argon2id", Password(UNICODE))
    done.set()
    await task
    assert ticks > 1
    assert verify_password("argon2id", Password(UNICODE), hashed)


def test_password_repr_and_str_hide_the_plaintext() -> None:
    """A Password's repr, str and f-string never show the plaintext, while reveal() returns it."""
    password = Password("hunter2-secret")
    for shown in (repr(password), str(password), f"{password}", repr([password])):
        assert "hunter2" not in shown
    assert password.reveal() == "hunter2-secret"
