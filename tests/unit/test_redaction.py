"""The one rule every adapter applies before quoting a target's reply: a reply that repeats the
password, or any four characters of it in a row, in whatever form, is withheld."""

from __future__ import annotations

import json

import pytest

from targets.redaction import REDACTED, echoes, one_line, quotable, redact

SECRET = "Tr0ub4dor&3-horse"
UNICODE = "Пароль-密码-🔑-ß"


@pytest.mark.parametrize(
    "reply",
    [
        f"password '{SECRET}' is too weak",
        f"PASSWORD {SECRET.upper()} REJECTED",
        f"value starting {SECRET[:4]}... rejected",
        "value " + "\u200b".join(SECRET) + " rejected",
        "value " + " ".join(SECRET) + " rejected",
        "value " + SECRET.replace("&", "%26") + " rejected",
        "value " + SECRET.replace("&", "&amp;") + " rejected",
        "value \uff34\uff32\uff10\uff35\uff22 rejected",  # full-width TR0UB, equal under NFKC
        "horse",
    ],
    ids=[
        "verbatim",
        "upper-case",
        "prefix",
        "zero-width-split",
        "spaced-out",
        "percent-encoded",
        "html-escaped",
        "full-width",
        "suffix",
    ],
)
def test_a_reply_repeating_the_password_or_four_characters_of_it_echoes(reply: str) -> None:
    """The password, or any four consecutive characters of it, in any case, width, encoding or
    with invisible characters or spaces between them, counts as an echo."""
    assert echoes(reply, [SECRET])


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps({"got": UNICODE}).encode(),  # JSON-escaped as \\uXXXX
        json.dumps({"got": UNICODE}, ensure_ascii=False).encode(),
        f"rejected {UNICODE}".encode("utf-16-le"),
        f"rejected {UNICODE}".encode("utf-16-be"),
        "rejected ПАРОЛЬ".encode(),
    ],
    ids=["json-ascii", "json-utf8", "utf-16-le", "utf-16-be", "upper-cyrillic"],
)
def test_bytes_echoing_a_unicode_password_in_any_encoding_echo(reply: bytes) -> None:
    """A byte reply is read as UTF-8, Latin-1 and (with NULs) UTF-16; JSON escapes hide nothing."""
    assert echoes(reply, [UNICODE])


def test_a_latin1_echo_is_seen_though_utf8_shows_only_replacement_characters() -> None:
    """A password whose every four characters include a non-ASCII one, echoed in Latin-1, is
    still an echo (read as Latin-1)."""
    password = "ÄÖÜßäöü"
    assert echoes(b"rejected " + password.encode("latin-1"), [password])


@pytest.mark.parametrize(
    ("reply", "password"),
    [
        ("Password is too short", "Qx7-zz-Kv9"),
        ("Password fails quality checking policy", "Пароль-Secret"),
        ("the password shares 'hor' only", SECRET),
        ("", SECRET),
    ],
)
def test_a_reply_sharing_at_most_three_characters_in_a_row_does_not_echo(
    reply: str, password: str
) -> None:
    """Ordinary diagnostics that share no run of four characters with the password stay."""
    assert not echoes(reply, [password])


def test_a_password_shorter_than_the_window_echoes_only_whole() -> None:
    """A three-character password is an echo when all three characters appear together."""
    assert echoes("got x9z here", ["x9z"])
    assert not echoes("got x9 and z", ["x9z"])


def test_a_hash_counts_only_when_echoed_whole() -> None:
    """A piece of a hash says nothing about the password; the whole hash is still withheld."""
    hashed = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
    assert not echoes("expected bcrypt, got argon2id", [], whole=[hashed])
    assert echoes(f"stored {hashed}", [], whole=[hashed])
    assert echoes(json.dumps({"h": hashed}), [], whole=[hashed])


def test_quotable_gives_one_bounded_line() -> None:
    """A reply that does not echo becomes one line of at most ``limit`` characters."""
    text = quotable(b"line one\nline two\r\n\t" + b"z" * 5000, ["unrelated-Pa55"], 200)
    assert text is not None
    assert len(text) <= 200
    assert text.startswith("line one line two z")
    assert text.endswith("…")
    tail = quotable("noise " * 100 + "the real error", ["pw"], 40, keep="tail")
    assert tail is not None
    assert tail.endswith("the real error")
    assert len(tail) <= 40


def test_quotable_withholds_an_echo_in_the_quote_or_across_the_cut() -> None:
    """None when the quoted part, or the password split by the cut, repeats the password."""
    assert quotable(f"rejected {SECRET}", [SECRET], 200) is None
    straddling = "x" * 195 + " " + SECRET + " and more"
    assert quotable(straddling, [SECRET], 200) is None


def test_quotable_judges_only_what_it_quotes() -> None:
    """An echo far beyond the quoted part does not withhold the part that says nothing of it."""
    reply = "account locked; contact the help desk." + " " + "." * 2000 + SECRET
    assert quotable(reply, [SECRET], 100) == "account locked; contact the help desk." + " " + (
        "." * 60 + "…"
    )


def test_truncated_reply_loses_the_piece_of_line_at_the_cut() -> None:
    """A reply cut by its reader drops the partial line at the cut when the quote reaches it,
    so a password split there cannot leave a fragment too short to recognise."""
    head = b"first line\nthen Tr0"
    assert quotable(head, [SECRET], 200, truncated=True) == "first line"
    assert quotable(head, [SECRET], 200) == "first line then Tr0"
    tail = b"se'\nthe real error\n"
    assert quotable(tail, [SECRET], 200, keep="tail", truncated=True) == "the real error"


def test_redact_replaces_every_exact_form() -> None:
    """Exact echoes (as is, JSON-escaped, percent-encoded, Latin-1) become ``[redacted]``."""
    reply = (
        f"a {SECRET} b {SECRET.replace('&', '%26')} c {json.dumps(UNICODE)[1:-1]} d {UNICODE}"
    ).encode()
    assert redact(reply, [SECRET, UNICODE]) == (
        f"a {REDACTED} b {REDACTED} c {REDACTED} d {REDACTED}".encode()
    )
    assert redact("é-ü-Pässwort".encode("latin-1"), ["é-ü-Pässwort"]) == REDACTED.encode()


def test_one_line_shows_unprintable_characters_as_replacement() -> None:
    """Control and format characters cannot hide in a reason: they show as U+FFFD."""
    assert one_line("a\x1b[31mb\u200bc", 50) == "a\ufffd[31mb\ufffdc"
