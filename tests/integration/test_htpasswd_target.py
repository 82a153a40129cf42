"""The htpasswd adapter, checked by Apache's own ``htpasswd -v``."""

from __future__ import annotations

import asyncio
import shutil
import stat
from pathlib import Path
from typing import Literal

import pytest

from targets.base import Password, PermanentError
from targets.htpasswd import HtpasswdSettings, HtpasswdTarget

pytestmark = pytest.mark.skipif(
    shutil.which("htpasswd") is None,
    reason="Apache's htpasswd (apache2-utils) is not on PATH; it is the oracle for these tests",
)

HtpasswdHash = Literal["bcrypt", "sha512_crypt", "apr1"]
UNICODE = "Пароль-密码-🔑-ß"


async def htpasswd_verify(path: Path, user: str, password: str) -> int:
    """Exit status of ``htpasswd -v -i``: 0 correct, 3 wrong password, 6 no such user."""
    process = await asyncio.create_subprocess_exec(
        "htpasswd",
        "-v",
        "-i",
        str(path),
        user,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await process.communicate(password.encode("utf-8"))
    assert process.returncode is not None
    return process.returncode


def make_target(
    path: Path, hash_: HtpasswdHash = "bcrypt", *, create: bool = True
) -> HtpasswdTarget:
    """A target on ``path`` with bcrypt at its cheapest cost, to keep the suite fast."""
    settings = HtpasswdSettings(path=path, hash=hash_, bcrypt_cost=4, create=create)
    return HtpasswdTarget("web", settings)


@pytest.mark.parametrize("hash_", ["bcrypt", "sha512_crypt", "apr1"])
async def test_htpasswd_accepts_new_password_and_rejects_old(
    tmp_path: Path, hash_: HtpasswdHash
) -> None:
    """After a change, Apache's htpasswd accepts the new password and rejects the previous one."""
    path = tmp_path / "users.htpasswd"
    target = make_target(path, hash_)
    await target.set_password("alice", Password("first-Pa55"))
    assert await htpasswd_verify(path, "alice", "first-Pa55") == 0
    await target.set_password("alice", Password("second-Pa55"))
    assert await htpasswd_verify(path, "alice", "second-Pa55") == 0
    assert await htpasswd_verify(path, "alice", "first-Pa55") == 3
    content = path.read_text()
    assert content.count("alice:") == 1
    assert "second-Pa55" not in content
    await target.close()


@pytest.mark.parametrize(("hash_", "prefix"), [("bcrypt", "$2y$04$"), ("sha512_crypt", "$6$")])
async def test_hash_format_matches_apache(tmp_path: Path, hash_: HtpasswdHash, prefix: str) -> None:
    """Lines carry the prefix Apache itself writes (bcrypt as $2y$, with the configured cost)."""
    path = tmp_path / "users.htpasswd"
    await make_target(path, hash_).set_password("alice", Password("pw"))
    assert path.read_text().startswith("alice:" + prefix)


@pytest.mark.parametrize("hash_", ["bcrypt", "sha512_crypt", "apr1"])
async def test_unicode_password(tmp_path: Path, hash_: HtpasswdHash) -> None:
    """A password of Cyrillic, CJK, an emoji and ß is accepted by htpasswd byte for byte."""
    path = tmp_path / "users.htpasswd"
    await make_target(path, hash_).set_password("łukasz", Password(UNICODE))
    assert await htpasswd_verify(path, "łukasz", UNICODE) == 0
    assert await htpasswd_verify(path, "łukasz", "Пароль-密码-🔑-ss") == 3


async def test_other_lines_and_order_are_preserved(tmp_path: Path) -> None:
    """Changing one account rewrites only its line; comments, blanks and other users stay put."""
    path = tmp_path / "users.htpasswd"
    carol = await asyncio.create_subprocess_exec(
        "htpasswd", "-nbB", "-C", "4", "carol", "carol-pw", stdout=asyncio.subprocess.PIPE
    )
    carol_line = (await carol.communicate())[0].decode().strip()
    original = ["# managed by hand", "alice:$apr1$oldsalt$oldhasholdhasholdhash.", "", carol_line]
    path.write_text("\n".join(original))  # no trailing newline on purpose
    target = make_target(path)

    await target.set_password("alice", Password("alice-new"))
    await target.set_password("bob", Password("bob-new"))

    lines = path.read_text().splitlines()
    assert lines[0] == "# managed by hand"
    assert lines[1].startswith("alice:$2y$")
    assert lines[2:4] == ["", carol_line]
    assert lines[4].startswith("bob:$2y$")
    assert len(lines) == 5
    assert path.read_text().endswith("\n")
    assert await htpasswd_verify(path, "carol", "carol-pw") == 0
    assert await htpasswd_verify(path, "alice", "alice-new") == 0
    assert await htpasswd_verify(path, "bob", "bob-new") == 0


async def test_stale_duplicate_lines_are_dropped(tmp_path: Path) -> None:
    """An account listed twice ends up with one line, in the first one's place."""
    path = tmp_path / "users.htpasswd"
    path.write_text("alice:$apr1$a$a\nbob:$apr1$b$b\nalice:$apr1$c$c\n")
    await make_target(path).set_password("alice", Password("new"))
    lines = path.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob"]
    assert await htpasswd_verify(path, "alice", "new") == 0


async def test_file_mode_is_kept_and_new_files_are_0640(tmp_path: Path) -> None:
    """A rewritten file keeps its permissions; a file the adapter creates is 0640."""
    existing = tmp_path / "existing.htpasswd"
    existing.write_text("")
    existing.chmod(0o600)
    await make_target(existing).set_password("alice", Password("pw"))
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600

    created = tmp_path / "created.htpasswd"
    await make_target(created).set_password("alice", Password("pw"))
    assert stat.S_IMODE(created.stat().st_mode) == 0o640
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # noqa: ASYNC240
    assert leftovers == []


async def test_missing_file_is_permanent_without_create(tmp_path: Path) -> None:
    """With create=false a missing file is a permanent error and no file appears."""
    path = tmp_path / "users.htpasswd"
    target = make_target(path, create=False)
    with pytest.raises(PermanentError, match="does not exist"):
        await target.set_password("alice", Password("pw"))
    with pytest.raises(PermanentError, match="does not exist"):
        await target.check()
    assert not path.exists()


async def test_concurrent_changes_leave_a_consistent_file(tmp_path: Path) -> None:
    """Sixty concurrent changes through two targets on one file all land, one line each."""
    path = tmp_path / "users.htpasswd"
    first, second = make_target(path), make_target(path, "apr1")
    accounts = [f"user{i:02d}" for i in range(60)]
    await asyncio.gather(
        *(
            (first if i % 2 else second).set_password(account, Password(f"pw-{account}"))
            for i, account in enumerate(accounts)
        )
    )
    names = [line.split(":")[0] for line in path.read_text().splitlines()]
    assert sorted(names) == accounts
    results = await asyncio.gather(*(htpasswd_verify(path, a, f"pw-{a}") for a in accounts))
    assert results == [0] * len(accounts)


@pytest.mark.parametrize("account", ["", "a:b", "a\nb", "a\rb", "a\0b"])
async def test_bad_account_names_are_permanent(tmp_path: Path, account: str) -> None:
    """An empty name, or one with ':', a line break or NUL, is refused and the file untouched."""
    path = tmp_path / "users.htpasswd"
    path.write_text("alice:$apr1$a$a\n")
    with pytest.raises(PermanentError, match="account name"):
        await make_target(path).set_password(account, Password("pw"))
    assert path.read_text() == "alice:$apr1$a$a\n"


async def test_bcrypt_password_over_72_bytes_is_permanent(tmp_path: Path) -> None:
    """A bcrypt target refuses a password over 72 bytes instead of storing a truncated hash."""
    path = tmp_path / "users.htpasswd"
    with pytest.raises(PermanentError, match="72"):
        await make_target(path).set_password("alice", Password("x" * 73))
    assert not path.exists()


async def test_check_needs_an_existing_writable_directory(tmp_path: Path) -> None:
    """check() passes for a writable directory and fails permanently for a missing one."""
    await make_target(tmp_path / "users.htpasswd").check()
    with pytest.raises(PermanentError, match="does not exist"):
        await make_target(tmp_path / "missing" / "users.htpasswd").check()
    with pytest.raises(PermanentError):
        await make_target(tmp_path / "missing" / "users.htpasswd").set_password("a", Password("p"))


def test_settings_reject_unknown_fields_and_bad_cost(tmp_path: Path) -> None:
    """Settings refuse an unknown key or an out-of-range bcrypt cost, naming the field."""
    with pytest.raises(ValueError, match="bcrypt_cost"):
        HtpasswdSettings(path=tmp_path / "x", bcrypt_cost=3)
    with pytest.raises(ValueError, match="colour"):
        HtpasswdSettings.model_validate({"path": str(tmp_path / "x"), "colour": "red"})
