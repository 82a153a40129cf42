"""One LDIF record from ``samba-tool user syncpasswords`` -> one password change for pcns.

syncpasswords runs its ``--script`` once per changed account with the account's current state
as one LDIF record on stdin, for example::

    dn: CN=alice,CN=Users,DC=corp,DC=example
    objectGUID: 3a558c04-98c2-4d37-8fea-51dcf2900582
    objectSid: S-1-5-21-1490550168-103638359-2310111724-1102
    sAMAccountName: alice
    userPrincipalName: alice@corp.example
    pwdLastSet: 134404031903399310
    msDS-KeyVersionNumber: 2
    virtualClearTextUTF8:: SW5pdDFhbFBhc3Mh

Samba writes ``objectSid`` and ``objectGUID`` as text; other LDIF writers give them as binary
(``objectSid:: AQUAAAAAAAUVAAAA...``), so both forms are read. Parsing is the ``ldif`` package's
(RFC 2849: base64 ``::`` values, folded lines), with values kept as bytes and decoded here.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ldif import LDIFParser

from pcns.client import stable_webhook_id

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


class LdifRecordError(ValueError):
    """stdin did not hold exactly one LDIF record with an account in it (never shows values)."""


@dataclass(frozen=True)
class AccountRecord:
    """What syncpasswords told us about one account; ``password`` is None without a cleartext."""

    dn: str
    user: str
    guid: str | None = None
    sid: str | None = None
    upn: str | None = None
    pwd_last_set: int | None = None
    key_version: int | None = None
    deleted: bool = False
    password: str | None = field(default=None, repr=False)

    @property
    def changed_at(self) -> datetime | None:
        """``pwdLastSet`` as a time; None when unset or 0 ("must change at next logon")."""
        if not self.pwd_last_set:
            return None
        return _FILETIME_EPOCH + timedelta(microseconds=self.pwd_last_set // 10)

    def change(self, domain: str | None) -> dict[str, Any]:
        """The ``POST /v1/password-changes`` body; only for a record with a password."""
        if self.password is None:
            raise ValueError("record has no cleartext password")
        body: dict[str, Any] = {"user": self.user, "password": self.password}
        if domain:
            body["domain"] = domain
        if self.upn:
            body["upn"] = self.upn
        if self.sid:
            body["sid"] = self.sid
        if self.changed_at is not None:
            body["changed_at"] = self.changed_at.isoformat().replace("+00:00", "Z")
        return body

    def webhook_id(self, secret: bytes) -> str:
        """Stable per password change of this account, so a replayed change is deduped.

        The account is named by its objectGUID (it survives renames), else its SID, else its
        name. The change is named by ``msDS-KeyVersionNumber`` (counts every password set) and
        ``pwdLastSet`` (when it was set) when syncpasswords was asked for them: then the password
        itself is not an input, so the id is no password verifier, and setting an earlier
        password again (A, B, A) is a new change. Without them, the id falls back to a digest of
        the password: a resend still dedupes, but A, B, A would be taken for the first A.
        """
        account = self.guid or self.sid or self.user
        if self.key_version is not None or self.pwd_last_set is not None:
            return stable_webhook_id(
                secret,
                "samba",
                account,
                f"kvno={self.key_version}",
                f"pwdLastSet={self.pwd_last_set}",
            )
        digest = hashlib.sha256((self.password or "").encode("utf-8")).digest()
        return stable_webhook_id(secret, "samba", account, "password-sha256", digest)


def sid_to_string(raw: bytes) -> str:
    """A binary SID (MS-DTYP 2.4.2.2) -> ``S-1-5-21-...``."""
    if len(raw) < 8 or raw[0] != 1 or len(raw) != 8 + 4 * raw[1]:
        raise LdifRecordError("objectSid is not a valid binary SID")
    authority = int.from_bytes(raw[2:8], "big")
    subs = [int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(raw[1])]
    return "-".join(["S", str(raw[0]), str(authority), *map(str, subs)])


def _sid(raw: bytes) -> str:
    if raw.startswith(b"S-1-"):
        return raw.decode("ascii")
    return sid_to_string(raw)


def _guid(raw: bytes) -> str:
    if len(raw) == 16:
        return str(uuid.UUID(bytes_le=raw))  # Windows GUID byte order
    try:
        return str(uuid.UUID(raw.decode("ascii")))
    except ValueError:
        raise LdifRecordError("objectGUID is neither 16 bytes nor a GUID string") from None


def _int(raw: bytes, name: str) -> int:
    try:
        return int(raw.decode("ascii"))
    except ValueError:
        raise LdifRecordError(f"{name} is not an integer") from None


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LdifRecordError(f"{name} is not UTF-8") from None


def parse_record(data: bytes) -> AccountRecord:
    """Parse exactly one LDIF record; attribute names are case-insensitive, as in LDAP."""
    try:
        # encoding=None keeps every value as bytes: a binary SID must not be guessed at as text.
        records = list(LDIFParser(io.BytesIO(data), encoding=None, strict=False).parse())
    except ValueError:  # also binascii.Error from a broken base64 value
        raise LdifRecordError("stdin is not valid LDIF") from None
    if len(records) != 1:
        raise LdifRecordError(f"expected one LDIF record on stdin, got {len(records)}")
    dn, entry = records[0]
    attrs: dict[str, bytes] = {}
    for name, values in entry.items():
        if values:
            attrs.setdefault(name.lower(), values[0])

    if dn is None:
        raise LdifRecordError("the LDIF record has no dn")
    if "samaccountname" not in attrs:
        raise LdifRecordError(
            "the record has no sAMAccountName: add it to syncpasswords --attributes"
        )
    cleartext = attrs.get("virtualcleartextutf8")
    password: str | None = None
    if cleartext:
        try:
            password = cleartext.decode("utf-8")
        except UnicodeDecodeError:
            password = None  # not a usable password (random bytes of a machine account)
    return AccountRecord(
        dn=dn,
        user=_text(attrs["samaccountname"], "sAMAccountName"),
        guid=_guid(attrs["objectguid"]) if "objectguid" in attrs else None,
        sid=_sid(attrs["objectsid"]) if "objectsid" in attrs else None,
        upn=_text(attrs["userprincipalname"], "userPrincipalName")
        if "userprincipalname" in attrs
        else None,
        pwd_last_set=_int(attrs["pwdlastset"], "pwdLastSet") if "pwdlastset" in attrs else None,
        key_version=_int(attrs["msds-keyversionnumber"], "msDS-KeyVersionNumber")
        if "msds-keyversionnumber" in attrs
        else None,
        deleted=attrs.get("isdeleted", b"").upper() == b"TRUE",
        password=password or None,
    )
