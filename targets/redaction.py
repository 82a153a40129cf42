"""What an adapter may quote from a target's reply: the one rule for "did it echo the password?".

Servers and scripts repeat what they were sent ("'hunter2' is too short"), so text a target sends
back (an HTTP body, a SCIM error detail, an LDAP diagnostic, a script's stderr) reaches an error
reason only through :func:`quotable`, which decides by :func:`echoes`:

- a reply echoes a password when any ``ECHO_WINDOW`` consecutive characters of it (all of a
  shorter one) appear in the reply, after NFKC normalisation and case folding of both, in any
  form a reply may carry it: as is, JSON-escaped, percent-encoded or HTML-escaped;
- the password as is is also looked for with invisible characters (controls, zero-width and
  other format characters, spaces) removed from both sides, and with everything but letters and
  digits removed from both (``ECHO_WINDOW`` characters at least): an echo spaced out or split by
  zero-width spaces is still an echo;
- a reply in bytes is read as UTF-8, as Latin-1 and, when it holds NULs, as UTF-16;
- a hash is not a password: a piece of it tells nothing, so it counts only when echoed whole;
- a reply that echoes is withheld entirely, since cutting the echo out would still tell its
  place and length. Only :func:`redact` cuts exact echoes out, for the command adapter's stderr
  (the operator's own script, whose last lines are the diagnostic); what is left is then judged
  by the same rule.

Only what would be quoted is judged (plus, past the cut, as many characters as the longest
form of a secret): the page that follows a short error message may share four letters with
the password without withholding the message.
"""

from __future__ import annotations

import contextlib
import html
import json
import unicodedata
from collections.abc import Iterable
from typing import Final, Literal
from urllib.parse import quote, quote_plus

Keep = Literal["head", "tail"]

ECHO_WINDOW: Final = 4
REDACTED: Final = "[redacted]"
# Another reading of a reply (Latin-1, UTF-16) is at most four times as long as the UTF-8 one.
_STRETCH: Final = 4


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _visible(text: str) -> str:
    """``text`` without control, format (zero-width) and separator characters."""
    return "".join(c for c in text if unicodedata.category(c)[0] not in "CZ")


def _skeleton(text: str) -> str:
    """``text``'s letters and digits only."""
    return "".join(c for c in text if unicodedata.category(c)[0] in "LN")


def secret_forms(secret: str) -> set[str]:
    """The texts under which ``secret`` shows up in a reply: as is, JSON-escaped (ASCII and
    UTF-8), percent-encoded (``%20`` and ``+`` for spaces) and HTML-escaped."""
    if not secret:
        return set()
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe="", errors="surrogatepass"),
        quote_plus(secret, safe="", errors="surrogatepass"),
        html.escape(secret),
    }


def _windows(text: str, width: int) -> set[str]:
    return {text[i : i + width] for i in range(len(text) - width + 1)} if width else set()


def _probes(passwords: Iterable[str], whole: Iterable[str]) -> list[tuple[int, set[str]]]:
    """(view, needles) pairs: view 0 is the folded text, 1 its visible part, 2 its skeleton."""
    probes: list[tuple[int, set[str]]] = []
    for password in passwords:
        for form in secret_forms(password):
            needle = _folded(form)
            probes.append((0, _windows(needle, min(ECHO_WINDOW, len(needle)))))
        folded = _folded(password)
        visible, skeleton = _visible(folded), _skeleton(folded)
        probes.append((1, _windows(visible, min(ECHO_WINDOW, len(visible)))))
        if len(skeleton) >= ECHO_WINDOW:
            probes.append((2, _windows(skeleton, ECHO_WINDOW)))
    for secret in whole:
        probes.append((0, {_folded(form) for form in secret_forms(secret)}))
    return probes


def _readings(reply: bytes | str) -> list[str]:
    """How a reply may be read: as UTF-8, and unless it is plain ASCII as Latin-1 too, and when
    it holds NULs as UTF-16 (both byte orders) too. The first is the one shown."""
    if isinstance(reply, str):
        return [reply]
    readings = [reply.decode("utf-8", "replace")]
    if not reply.isascii():
        readings.append(reply.decode("latin-1"))
    if b"\0" in reply:
        readings += [reply.decode(codec, "replace") for codec in ("utf-16-le", "utf-16-be")]
    return readings


def echoes(reply: bytes | str, passwords: Iterable[str], *, whole: Iterable[str] = ()) -> bool:
    """Whether ``reply`` repeats any of ``passwords`` (or a piece of one), or any of ``whole``
    in full, by the rule in this module's docstring."""
    probes = _probes(passwords, whole)
    if not probes:
        return False
    for reading in _readings(reply):
        folded = _folded(reading)
        views = (folded, _visible(folded), _skeleton(folded))
        if any(needle in views[view] for view, needles in probes for needle in needles):
            return True
    return False


def redact(data: bytes, secrets: Iterable[str]) -> bytes:
    """``data`` with every exact occurrence of ``secrets``, in any of their forms (UTF-8 or
    Latin-1 encoded), replaced by ``[redacted]``."""
    forms: set[bytes] = set()
    for secret in secrets:
        for text in secret_forms(secret):
            forms.add(text.encode("utf-8", "surrogatepass"))
            with contextlib.suppress(UnicodeEncodeError):
                forms.add(text.encode("latin-1"))
    for form in sorted(forms, key=len, reverse=True):
        data = data.replace(form, REDACTED.encode("ascii"))
    return data


def _flat(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, limit: int, keep: Keep) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if keep == "head" else "…" + text[-(limit - 1) :]


def one_line(text: str, limit: int, *, keep: Keep = "head") -> str:
    """``text`` on one line: whitespace runs folded to one space, unprintable characters shown
    as U+FFFD, cut to at most ``limit`` characters ("…" marks the cut). ``keep="tail"`` keeps
    the end instead (where a script prints its final error)."""
    shown = "".join(c if c.isprintable() else "\ufffd" for c in _flat(text))
    return _cut(shown, limit, keep)


def _without_partial_line(reply: bytes | str, keep: Keep) -> bytes | str:
    """``reply`` less the piece of line at its far end, where a reader cut it off."""
    data = reply.encode("utf-8", "surrogatepass") if isinstance(reply, str) else reply
    if keep == "head":
        data = data[: data.rfind(b"\n") + 1]
    else:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    return data.decode("utf-8", "surrogatepass") if isinstance(reply, str) else data


def quotable(
    reply: bytes | str,
    passwords: Iterable[str],
    limit: int,
    *,
    keep: Keep = "head",
    whole: Iterable[str] = (),
    truncated: bool = False,
) -> str | None:
    """``reply`` as one line of at most ``limit`` characters for an error reason, or None when
    that line (or the text just past where it was cut) echoes a secret.

    ``truncated``: the reply is what a reader kept of a longer one (its head for
    ``keep="head"``, its tail for ``"tail"``). When the quote would reach that cut, the piece of
    line there is dropped first: a password split by the cut is no longer whole enough to see.
    """
    passwords, whole = list(passwords), list(whole)
    reach = max((len(f) for s in (*passwords, *whole) for f in secret_forms(s)), default=0)
    size = limit + reach
    if truncated and len(_flat(_readings(reply)[0])) <= size:
        reply = _without_partial_line(reply, keep)
    readings = [_flat(reading) for reading in _readings(reply)]
    judged = []
    for i, text in enumerate(readings):
        span = size * (_STRETCH if i else 1)
        judged.append(text[:span] if keep == "head" else text[-span:])
    if any(echoes(text, passwords, whole=whole) for text in judged):
        return None
    return one_line(readings[0], limit, keep=keep)
