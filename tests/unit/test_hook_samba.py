"""The Samba hook's LDIF record mapping and its per-change webhook-id, without any I/O."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest

from pcns.errors import ConfigError
from pcns.hooks.config import load_hook_settings
from pcns.hooks.samba import AccountRecord, LdifRecordError, parse_record, sid_to_string

SECRET = b"s" * 32
UNICODE_PASSWORD = "Пароль-密码-🔑-ß"
DOMAIN_SID = "S-1-5-21-1490550168-103638359-2310111724-1102"
GUID = "3a558c04-98c2-4d37-8fea-51dcf2900582"


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def fold(line: str, width: int = 76) -> str:
    """RFC 2849 folding: continuation lines start with one space."""
    first, rest = line[:width], line[width:]
    return "\n".join([first, *(" " + rest[i : i + width - 1] for i in range(0, len(rest), 75))])


def record(password: str | None = "N3w-Passw0rd!", **over: str) -> bytes:  # noqa: S107
    """A record as syncpasswords writes it (Samba 4.17, SID and GUID as text)."""
    attrs = {
        "objectGUID": GUID,
        "objectSid": DOMAIN_SID,
        "sAMAccountName": "alice",
        "userPrincipalName": "alice@corp.example",
        "pwdLastSet": "134404031903399310",
        "msDS-KeyVersionNumber": "2",
        **over,
    }
    lines = ["dn: CN=alice,CN=Users,DC=corp,DC=example"]
    lines += [f"{k}: {v}" for k, v in attrs.items() if v]
    if password is not None:
        lines.append(fold(f"virtualClearTextUTF8:: {b64(password)}"))
    return ("\n".join(lines) + "\n\n").encode()


def test_samba_record_maps_to_a_change() -> None:
    """Every field syncpasswords sends lands in the body pcns expects."""
    rec = parse_record(record())
    assert rec.change("CORP") == {
        "user": "alice",
        "password": "N3w-Passw0rd!",
        "domain": "CORP",
        "upn": "alice@corp.example",
        "sid": DOMAIN_SID,
        "changed_at": "2026-11-29T05:19:50.339931Z",
    }
    assert rec.guid == GUID


def test_folded_base64_unicode_password_is_exact() -> None:
    """A long Unicode password, base64 and folded over several lines, decodes intact."""
    password = UNICODE_PASSWORD * 8
    data = record(password)
    assert data.count(b"\n ") >= 2  # really folded
    assert parse_record(data).password == password


def test_base64_utf8_text_values() -> None:
    """Non-ASCII names given base64 (``::``) or raw UTF-8 both decode as text."""
    data = record(sAMAccountName="").replace(
        b"userPrincipalName: alice@corp.example",
        f"sAMAccountName:: {b64('jürgen')}\nuserPrincipalName: jürgen@corp.example".encode(),
    )
    rec = parse_record(data)
    assert (rec.user, rec.upn) == ("jürgen", "jürgen@corp.example")


def test_binary_sid_and_guid() -> None:
    """objectSid/objectGUID given as binary (as ldapsearch shows them) become their strings."""
    subs = [21, 1490550168, 103638359, 2310111724, 1102]
    raw_sid = bytes([1, len(subs)]) + (5).to_bytes(6, "big") + struct.pack("<5I", *subs)
    raw_guid = bytes.fromhex("048c553ac298374d8fea51dcf2900582")  # Windows byte order
    rec = parse_record(
        record(objectSid="", objectGUID="").replace(
            b"sAMAccountName",
            f"objectSid:: {b64(raw_sid)}\nobjectGUID:: {b64(raw_guid)}\nsAMAccountName".encode(),
            1,
        )
    )
    assert rec.sid == DOMAIN_SID
    assert rec.guid == GUID


def test_well_known_binary_sid() -> None:
    """The documented bytes of BUILTIN\\Administrators give S-1-5-32-544."""
    raw = bytes.fromhex("01020000000000052000000020020000")
    assert sid_to_string(raw) == "S-1-5-32-544"
    with pytest.raises(LdifRecordError):
        sid_to_string(raw[:-1])


def test_record_without_cleartext_has_no_password() -> None:
    """A computer account or a change from before GPG was configured carries no cleartext."""
    rec = parse_record(record(password=None, pwdLastSet="0"))
    assert rec.password is None
    assert rec.changed_at is None
    with pytest.raises(ValueError, match="no cleartext"):
        rec.change("CORP")


def test_attribute_names_are_case_insensitive() -> None:
    """``samaccountname`` and ``VIRTUALCLEARTEXTUTF8`` are the same attributes."""
    data = record().replace(b"sAMAccountName", b"samaccountname")
    data = data.replace(b"virtualClearTextUTF8", b"VIRTUALCLEARTEXTUTF8")
    rec = parse_record(data)
    assert (rec.user, rec.password) == ("alice", "N3w-Passw0rd!")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "got 0"),
        (record() + record(), "got 2"),
        (record(sAMAccountName=""), "sAMAccountName"),
        (b"dn: CN=x\nthis line has no colon\n", "not valid LDIF"),
        (record(**{"msDS-KeyVersionNumber": "x"}), "not an integer"),
    ],
)
def test_malformed_input_is_refused_without_values(data: bytes, message: str) -> None:
    """Anything but one account record is an error that names no value."""
    with pytest.raises(LdifRecordError, match=message) as err:
        parse_record(data)
    assert "N3w" not in str(err.value)


def test_password_never_in_repr() -> None:
    """A record can be logged or shown in a traceback without its password."""
    assert "N3w-Passw0rd!" not in repr(parse_record(record()))


def test_webhook_id_is_stable_for_a_replayed_change() -> None:
    """The same change read twice (a syncpasswords restart) gets the same webhook-id."""
    first = parse_record(record()).webhook_id(SECRET)
    reordered = record().replace(b"pwdLastSet", b"X").replace(b"X", b"pwdLastSet")
    assert parse_record(reordered).webhook_id(SECRET) == first
    assert first.startswith("pcns_")
    assert len(first) <= 256
    assert first.isprintable()


def test_webhook_id_changes_with_each_password_change() -> None:
    """A new password set (new key version and time) is a new change, even A, B, A."""
    a1 = parse_record(record("A-pass1!", **{"msDS-KeyVersionNumber": "2"}))
    b = parse_record(
        record("B-pass1!", **{"msDS-KeyVersionNumber": "3", "pwdLastSet": "134404031999999999"})
    )
    a2 = parse_record(
        record("A-pass1!", **{"msDS-KeyVersionNumber": "4", "pwdLastSet": "134404032999999999"})
    )
    ids = {r.webhook_id(SECRET) for r in (a1, b, a2)}
    assert len(ids) == 3


def test_webhook_id_is_keyed_and_not_a_password_digest() -> None:
    """Another source's secret gives another id; the id is not a plain hash of the password."""
    rec = parse_record(record())
    assert rec.webhook_id(SECRET) != rec.webhook_id(b"t" * 32)
    assert hashlib.sha256(b"N3w-Passw0rd!").hexdigest()[:20] not in rec.webhook_id(SECRET)


def test_webhook_id_fallback_without_version_attributes() -> None:
    """Without pwdLastSet/msDS-KeyVersionNumber the id follows the password: same or new."""
    bare = {"pwdLastSet": "", "msDS-KeyVersionNumber": ""}
    one = parse_record(record("First-pass1!", **bare))
    again = parse_record(record("First-pass1!", **bare))
    other = parse_record(record("Second-pass1!", **bare))
    assert one.key_version is None
    assert one.pwd_last_set is None
    assert one.webhook_id(SECRET) == again.webhook_id(SECRET)
    assert one.webhook_id(SECRET) != other.webhook_id(SECRET)


def test_guid_names_the_account_across_renames() -> None:
    """A renamed account (same objectGUID) keeps its change ids; the GUID is what counts."""
    old = AccountRecord(dn="CN=a", user="alice", guid=GUID, key_version=2, pwd_last_set=1)
    new = AccountRecord(dn="CN=b", user="alice2", guid=GUID, key_version=2, pwd_last_set=1)
    assert old.webhook_id(SECRET) == new.webhook_id(SECRET)


@pytest.mark.parametrize("name", ["samba/samba-hook.toml", "pam/pam-hook.toml"])
def test_deploy_examples_are_valid_hook_configs(name: str) -> None:
    """The example hook configs in deploy/ load as they are."""
    settings = load_hook_settings(Path(__file__).parents[2] / "deploy" / name)
    assert settings.url.startswith("https://")


def test_plain_http_only_to_loopback(tmp_path: Path) -> None:
    """The body carries the password: http:// is refused unless pcns is on loopback."""
    path = tmp_path / "hook.toml"
    path.write_text('url = "http://pcns.corp.example"\nsource = "dc01"\nsecret_file = "x"\n')
    with pytest.raises(ConfigError, match=r"url: .*https"):
        load_hook_settings(path)
    path.write_text('url = "http://127.0.0.1:8080/"\nsource = "dc01"\nsecret_file = "x"\n')
    assert load_hook_settings(path).url == "http://127.0.0.1:8080"
