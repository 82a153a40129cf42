"""The ldap adapter against a real OpenLDAP slapd; proof is libldap's ``ldapwhoami`` binding."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ldap_server import LDAPWHOAMI, SLAPD
from tests.support import write_secret

_MISSING = [
    name
    for name, present in [
        ("/usr/sbin/slapd (Debian slapd)", SLAPD.exists()),
        ("ldapwhoami (Debian ldap-utils)", LDAPWHOAMI.exists()),
        ("ldapadd (Debian ldap-utils)", shutil.which("ldapadd") is not None),
        ("ldap3 (PyPI)", importlib.util.find_spec("ldap3") is not None),
    ]
    if not present
]
if _MISSING and os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
    pytest.fail(f"PCNS_REQUIRE_TOOLS=1 but not installed: {_MISSING}", pytrace=False)
if _MISSING:
    pytest.skip(
        f"the ldap adapter is tested against a real slapd; missing: {_MISSING}",
        allow_module_level=True,
    )

from pydantic import SecretStr, ValidationError  # noqa: E402

from targets.base import Password, PermanentError, TransientError  # noqa: E402
from targets.ldap import LdapSettings, LdapTarget, server_text  # noqa: E402
from tests.ldap_server import (  # noqa: E402
    ADMINS,
    BASE_DN,
    PEOPLE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    STRICT_POLICY,
    Slapd,
    TlsFiles,
    make_tls_files,
)

INITIAL = "Initial-Pw-1"
UNICODE = "Пароль-密码-🔑-ß"
LONG = "".join(chr(0x21 + (i * 7) % 94) for i in range(128))
TEMPLATE = f"uid={{account}},{PEOPLE}"


@pytest.fixture(scope="session")
def ldap_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("ldap-tls"))


def _started(directory: Path, tls: TlsFiles) -> Slapd:
    server = Slapd(directory, tls)
    server.start()
    try:
        server.populate()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory, ldap_tls: TlsFiles) -> Iterator[Slapd]:
    """One slapd shared by the tests that do not stop it."""
    server = _started(tmp_path_factory.mktemp("slapd"), ldap_tls)
    yield server
    server.stop()


@pytest.fixture
def own_slapd(tmp_path: Path, ldap_tls: TlsFiles) -> Iterator[Slapd]:
    """A slapd of this test's own, which it may stop and start."""
    server = _started(tmp_path / "slapd", ldap_tls)
    yield server
    server.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "bind.pw"
    write_secret(path, SERVICE_PASSWORD + "\n")
    path.chmod(0o600)
    return path


MakeTarget = Callable[..., LdapTarget]


@pytest.fixture
async def make_target(
    slapd: Slapd, ldap_tls: TlsFiles, password_file: Path
) -> AsyncIterator[MakeTarget]:
    """Build targets on the shared slapd (StartTLS, dn_template) and close them afterwards."""
    made: list[LdapTarget] = []

    def make(server: Slapd = slapd, **overrides: Any) -> LdapTarget:
        values: dict[str, Any] = {
            "url": server.ldap_url,
            "start_tls": True,
            "ca_file": ldap_tls.ca_file,
            "bind_dn": SERVICE_DN,
            "bind_password_file": password_file,
            "dn_template": TEMPLATE,
        }
        values.update(overrides)
        target = LdapTarget("directory", LdapSettings.model_validate(values))
        made.append(target)
        return target

    yield make
    for target in made:
        await target.close()


def new_uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def assert_new_password_only(
    server: Slapd, dn: str, new: str, old: str = INITIAL, *, start_tls: bool = True
) -> None:
    """ldapwhoami binds as ``dn`` with ``new`` and is refused with ``old``."""
    assert await server.whoami(dn, new, start_tls=start_tls)
    assert not await server.whoami(dn, old, start_tls=start_tls)


async def test_password_modify_over_starttls(slapd: Slapd, make_target: MakeTarget) -> None:
    """Password Modify over StartTLS: the user binds with the new password, not the old."""
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    await make_target().set_password(uid, Password("Second-Pw-2"))
    await assert_new_password_only(slapd, dn, "Second-Pw-2")
    # slapd hashed it by its own policy (password-hash {ARGON2}); no cleartext is stored.
    assert slapd.read(dn, "userPassword")[0].startswith(b"{ARGON2}")


async def test_password_modify_over_ldaps(slapd: Slapd, make_target: MakeTarget) -> None:
    """Password Modify over ldaps://: the user binds with the new password, not the old."""
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    target = make_target(url=slapd.ldaps_url, start_tls=False)
    await target.set_password(uid, Password("Second-Pw-2"))
    await assert_new_password_only(slapd, dn, "Second-Pw-2", start_tls=False)


@pytest.mark.parametrize(
    ("hash_", "prefix"),
    [
        ("ssha512", b"{SSHA512}"),
        ("sha512_crypt", b"{CRYPT}$6$"),
        ("argon2id", b"{ARGON2}$argon2id$"),
    ],
)
async def test_replace_with_precomputed_hash(
    slapd: Slapd, make_target: MakeTarget, hash_: str, prefix: bytes
) -> None:
    """mode = replace stores the configured scheme's value, and slapd accepts a bind with it."""
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    await make_target(mode="replace", hash=hash_).set_password(uid, Password("Second-Pw-2"))
    stored = slapd.read(dn, "userPassword")
    assert len(stored) == 1
    assert stored[0].startswith(prefix)
    await assert_new_password_only(slapd, dn, "Second-Pw-2")


@pytest.mark.parametrize("password", [UNICODE, LONG], ids=["unicode", "128-chars"])
@pytest.mark.parametrize(
    "mode",
    [
        {"mode": "password_modify"},
        {"mode": "replace", "hash": "ssha512"},
        {"mode": "replace", "hash": "sha512_crypt"},
        {"mode": "replace", "hash": "argon2id"},
    ],
    ids=["password_modify", "ssha512", "sha512_crypt", "argon2id"],
)
async def test_unicode_and_long_passwords(
    slapd: Slapd, make_target: MakeTarget, mode: dict[str, str], password: str
) -> None:
    """Cyrillic, CJK, an emoji and ß, or 128 characters, bind byte for byte in every mode."""
    assert len(LONG) == 128
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    await make_target(**mode).set_password(uid, Password(password))
    await assert_new_password_only(slapd, dn, password)
    if password == UNICODE:
        assert not await slapd.whoami(dn, "Пароль-密码-🔑-ss")


async def test_search_filter_finds_the_entry(slapd: Slapd, make_target: MakeTarget) -> None:
    """search_base + search_filter find a user by a non-ASCII uid anywhere below the base."""
    uid = new_uid("łukasz-")
    dn = slapd.add_user(uid, INITIAL)
    target = make_target(dn_template=None, search_base=BASE_DN, search_filter="(uid={account})")
    await target.set_password(uid, Password("Second-Pw-2"))
    await assert_new_password_only(slapd, dn, "Second-Pw-2")


async def test_dn_template_escapes_the_account(slapd: Slapd, make_target: MakeTarget) -> None:
    """An account with DN specials (comma, plus, quote, '#') reaches exactly its own entry."""
    uid = "#o'brien, jr+" + new_uid()
    dn = slapd.add_user(uid, INITIAL)
    await make_target().set_password(uid, Password("Second-Pw-2"))
    await assert_new_password_only(slapd, dn, "Second-Pw-2")


async def test_search_filter_escapes_the_account(slapd: Slapd, make_target: MakeTarget) -> None:
    """An account of '*' matches no entry (it is escaped), rather than every entry."""
    slapd.add_user(new_uid(), INITIAL)
    target = make_target(dn_template=None, search_base=PEOPLE, search_filter="(uid={account})")
    with pytest.raises(PermanentError, match=r"no entry under .* matches \(uid=\\2a\)"):
        await target.set_password("*", Password("Second-Pw-2"))


async def test_unknown_account_is_permanent(slapd: Slapd, make_target: MakeTarget) -> None:
    """An account with no entry is permanent, by DN template (noSuchObject) and by search."""
    with pytest.raises(PermanentError, match=r"noSuchObject \(32\)"):
        await make_target().set_password("nobody-here", Password("Second-Pw-2"))
    with pytest.raises(PermanentError, match=r"noSuchObject \(32\)"):
        await make_target(mode="replace", hash="ssha512").set_password(
            "nobody-here", Password("Second-Pw-2")
        )
    search = make_target(dn_template=None, search_base=BASE_DN, search_filter="(uid={account})")
    with pytest.raises(PermanentError, match="no entry under"):
        await search.set_password("nobody-here", Password("Second-Pw-2"))


async def test_ambiguous_search_is_permanent(slapd: Slapd, make_target: MakeTarget) -> None:
    """A filter that matches two entries is refused permanently and changes neither."""
    surname = new_uid("sn")
    first = slapd.add_user(new_uid(), INITIAL, sn=surname)
    second = slapd.add_user(new_uid(), INITIAL, sn=surname)
    target = make_target(dn_template=None, search_base=PEOPLE, search_filter="(sn={account})")
    with pytest.raises(PermanentError, match="more than one entry"):
        await target.set_password(surname, Password("Second-Pw-2"))
    assert await slapd.whoami(first, INITIAL)
    assert await slapd.whoami(second, INITIAL)


@pytest.mark.parametrize(
    "mode",
    [{"mode": "password_modify"}, {"mode": "replace", "hash": "argon2id"}],
    ids=["password_modify", "replace"],
)
async def test_policy_refusal_is_permanent_with_server_text(
    slapd: Slapd, make_target: MakeTarget, mode: dict[str, str]
) -> None:
    """ppolicy's refusal is permanent, quotes slapd's text, and never shows the password."""
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL, policy=STRICT_POLICY)
    with pytest.raises(PermanentError) as caught:
        await make_target(**mode).set_password(uid, Password("Too-Short-9"))
    reason = caught.value.reason
    assert "constraintViolation (19)" in reason
    assert "Password fails quality checking policy" in reason
    assert dn in reason
    assert "Too-Short-9" not in str(caught.value)
    assert "Too-Short-9" not in repr(caught.value)
    assert await slapd.whoami(dn, INITIAL)


async def test_acl_refusal_is_permanent(slapd: Slapd, make_target: MakeTarget) -> None:
    """An entry the service account may not write (ou=admins) is insufficientAccessRights."""
    uid = new_uid("admin-")
    dn = slapd.add_user(uid, INITIAL, parent=ADMINS)
    target = make_target(dn_template=f"uid={{account}},{ADMINS}", mode="replace", hash="ssha512")
    with pytest.raises(PermanentError, match=r"insufficientAccessRights \(50\)"):
        await target.set_password(uid, Password("Second-Pw-2"))
    assert await slapd.whoami(dn, INITIAL)


@pytest.mark.parametrize(
    "mode",
    [{"mode": "password_modify"}, {"mode": "replace", "hash": "ssha512"}],
    ids=["password_modify", "replace"],
)
async def test_verify_bind_skips_a_password_already_set(
    slapd: Slapd, make_target: MakeTarget, mode: dict[str, str]
) -> None:
    """With verify_bind, a password the user can already bind with is not written again."""
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    target = make_target(verify_bind=True, **mode)
    await target.set_password(uid, Password("Second-Pw-2"))
    stored = slapd.read(dn, "userPassword")
    stamp = slapd.read(dn, "modifyTimestamp")
    await assert_new_password_only(slapd, dn, "Second-Pw-2")

    # Both modes salt every write, so a second write would change the stored value.
    await target.set_password(uid, Password("Second-Pw-2"))
    assert slapd.read(dn, "userPassword") == stored
    assert slapd.read(dn, "modifyTimestamp") == stamp

    await target.set_password(uid, Password("Third-Pw-3"))
    assert slapd.read(dn, "userPassword") != stored
    await assert_new_password_only(slapd, dn, "Third-Pw-3", old="Second-Pw-2")


async def test_bad_service_account_password_is_transient(
    slapd: Slapd, make_target: MakeTarget, tmp_path: Path
) -> None:
    """A wrong service-account password is transient (an operator can fix it) and is named."""
    wrong = tmp_path / "wrong.pw"
    write_secret(wrong, "Not-The-Service-Pw")
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    target = make_target(bind_password_file=wrong)
    with pytest.raises(TransientError, match=r"service account bind .* invalidCredentials \(49\)"):
        await target.check()
    with pytest.raises(TransientError, match="invalidCredentials") as caught:
        await target.set_password(uid, Password("Second-Pw-2"))
    assert "Not-The-Service-Pw" not in str(caught.value)
    assert "Second-Pw-2" not in str(caught.value)
    assert await slapd.whoami(dn, INITIAL)

    # The file is read again on reconnect: once fixed, the same target works.
    write_secret(wrong, SERVICE_PASSWORD)
    await target.set_password(uid, Password("Second-Pw-2"))
    await assert_new_password_only(slapd, dn, "Second-Pw-2")


async def test_check_binds_and_reads_the_base(slapd: Slapd, make_target: MakeTarget) -> None:
    """check() passes for the template's parent and a search base; a missing base is permanent."""
    await make_target().check()
    await make_target(url=slapd.ldaps_url, start_tls=False).check()
    await make_target(dn_template=None, search_base=PEOPLE, search_filter="(uid={account})").check()
    with pytest.raises(PermanentError, match=r"noSuchObject \(32\)"):
        await make_target(dn_template=f"uid={{account}},ou=gone,{BASE_DN}").check()


async def test_untrusted_or_mismatched_certificate_is_refused(
    slapd: Slapd, make_target: MakeTarget
) -> None:
    """Without the CA, or with a host name the certificate does not name, no bind happens."""
    untrusted = make_target(url=slapd.ldaps_url, start_tls=False, ca_file=None)
    with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusted.check()
    with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
        await make_target(ca_file=None).check()
    mismatched = make_target(url=f"ldaps://localhost:{slapd.ldaps_port}", start_tls=False)
    with pytest.raises(TransientError, match="Hostname mismatch"):
        await mismatched.check()


async def test_server_down_is_transient_and_the_target_recovers(
    own_slapd: Slapd, make_target: MakeTarget
) -> None:
    """A restart between changes goes unnoticed; while slapd is down changes are transient."""
    uid = new_uid()
    dn = own_slapd.add_user(uid, INITIAL)
    target = make_target(own_slapd)
    await target.set_password(uid, Password("Second-Pw-2"))

    own_slapd.stop()
    own_slapd.start()
    await target.set_password(uid, Password("Third-Pw-3"))  # the pooled connection was stale
    await assert_new_password_only(own_slapd, dn, "Third-Pw-3", old="Second-Pw-2")

    own_slapd.stop()
    with pytest.raises(TransientError, match=r"connection to .* failed: .*Connection refused"):
        await target.set_password(uid, Password("Fourth-Pw-4"))
    with pytest.raises(TransientError, match="Connection refused"):
        await target.check()
    own_slapd.start()
    await target.set_password(uid, Password("Fourth-Pw-4"))
    await assert_new_password_only(own_slapd, dn, "Fourth-Pw-4", old="Third-Pw-3")


async def test_hung_server_is_transient_and_a_cancelled_call_frees_its_connection(
    own_slapd: Slapd, make_target: MakeTarget
) -> None:
    """A server that stops answering is transient after ``timeout``; an attempt cancelled
    meanwhile (the worker's attempt timeout) does not break the pool once slapd answers again."""
    uid = new_uid()
    dn = own_slapd.add_user(uid, INITIAL)
    target = make_target(own_slapd, timeout=1, pool_size=1)
    await target.set_password(uid, Password("Second-Pw-2"))
    own_slapd.pause()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await target.set_password(uid, Password("Third-Pw-3"))
        with pytest.raises(TransientError, match=r"connection to .* failed"):
            await target.set_password(uid, Password("Third-Pw-3"))
    finally:
        own_slapd.resume()
    await target.set_password(uid, Password("Third-Pw-3"))
    await assert_new_password_only(own_slapd, dn, "Third-Pw-3", old="Second-Pw-2")


async def test_concurrent_changes_share_the_pool(slapd: Slapd, make_target: MakeTarget) -> None:
    """Twelve concurrent changes through a two-connection pool all land."""
    uids = [new_uid() for _ in range(12)]
    dns = [slapd.add_user(uid, INITIAL) for uid in uids]
    target = make_target(pool_size=2)
    await asyncio.gather(*(target.set_password(u, Password(f"Pw-{u}")) for u in uids))
    checks: list[Awaitable[bool]] = [
        slapd.whoami(dn, f"Pw-{u}") for u, dn in zip(uids, dns, strict=True)
    ]
    assert all(await asyncio.gather(*checks))


async def test_plain_ldap_only_with_allow_insecure(
    slapd: Slapd, make_target: MakeTarget, password_file: Path
) -> None:
    """ldap:// without StartTLS is a config error naming allow_insecure, unless it is set."""
    with pytest.raises(ValidationError, match="allow_insecure"):
        LdapSettings(
            url=slapd.ldap_url,
            bind_dn=SERVICE_DN,
            bind_password_file=password_file,
            dn_template=TEMPLATE,
        )
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    insecure = make_target(start_tls=False, allow_insecure=True, ca_file=None)
    await insecure.set_password(uid, Password("Second-Pw-2"))
    await assert_new_password_only(slapd, dn, "Second-Pw-2")


@pytest.mark.parametrize("password", ["", "\ud800"], ids=["empty", "lone-surrogate"])
async def test_unsettable_passwords_are_permanent(
    slapd: Slapd, make_target: MakeTarget, password: str
) -> None:
    """An empty password (an anonymous bind) or a lone surrogate is refused before any I/O."""
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    with pytest.raises(PermanentError):
        await make_target(verify_bind=True).set_password(uid, Password(password))
    assert await slapd.whoami(dn, INITIAL)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"url": "ldaps://h", "start_tls": True}, "start_tls"),
        ({"url": "http://h"}, "url"),
        ({"url": "ldaps://h/dc=corp"}, "url"),
        ({"dn_template": None}, "dn_template"),
        ({"search_base": BASE_DN, "search_filter": "(uid={account})"}, "dn_template"),
        ({"dn_template": None, "search_base": BASE_DN}, "search_filter"),
        ({"dn_template": "uid=alice,dc=corp"}, "dn_template"),
        (
            {"dn_template": None, "search_base": BASE_DN, "search_filter": "uid={account}"},
            "search_filter",
        ),
        ({"mode": "replace"}, "hash"),
        ({"hash": "ssha512"}, "hash"),
        ({"hash": "md5"}, "hash"),
        ({"bind_password_file": None}, "bind_password_file"),
        ({"bind_password": "hunter2-Secret"}, "bind_password_file"),
        ({"bind_password_file": "/nonexistent/pw"}, "bind_password_file"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({"timeout": 0}, "timeout"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_settings_name_the_field(
    values: dict[str, object], field: str, password_file: Path
) -> None:
    """Invalid settings name the offending field and never echo the bind password."""
    base: dict[str, object] = {
        "url": "ldaps://ldap.corp.example",
        "bind_dn": SERVICE_DN,
        "bind_password_file": str(password_file),
        "dn_template": TEMPLATE,
    }
    with pytest.raises(ValidationError, match=field) as caught:
        LdapSettings.model_validate({**base, **values})
    assert "hunter2" not in str(caught.value)


def test_repr_hides_the_bind_password() -> None:
    """Neither the settings' nor the target's repr shows an inline bind password."""
    settings = LdapSettings(
        url="ldaps://ldap.corp.example",
        bind_dn=SERVICE_DN,
        bind_password=SecretStr("hunter2-Secret"),
        dn_template=TEMPLATE,
    )
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(LdapTarget("directory", settings))


def test_server_text_never_carries_the_password() -> None:
    """A server message that echoes the password (in any case) is withheld, others kept."""
    secret = "Пароль-Secret".encode()
    assert server_text("password пароль-secret is in the dictionary", secret).startswith(
        "(server text withheld"
    )
    assert server_text("Password fails\n quality checking policy", secret) == (
        "Password fails quality checking policy"
    )
    assert len(server_text("x" * 5000)) <= 300


async def test_service_account_password_inline(slapd: Slapd, make_target: MakeTarget) -> None:
    """bind_password may be given inline as a secret instead of a file."""
    uid = new_uid()
    dn = slapd.add_user(uid, INITIAL)
    target = make_target(bind_password_file=None, bind_password=SERVICE_PASSWORD)
    await target.set_password(uid, Password("Second-Pw-2"))
    await assert_new_password_only(slapd, dn, "Second-Pw-2")
