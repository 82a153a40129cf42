"""Text templates with named ``{field}`` placeholders, checked at load and rendered by hand.

The syntax is ``str.format``'s (``{account}``; ``{{`` and ``}}`` for literal braces), but only
bare names from an allow-list are accepted: no format specs, conversions, attribute or index
access. Rendering substitutes each value verbatim and once, so a value that itself looks like a
placeholder (a password containing ``{account}``) is never expanded.

Also here: how adapters keep a secret out of text a target sends back (a response body, a
script's stderr) before that text becomes part of an error reason.
"""

from __future__ import annotations

import contextlib
import json
import string
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text and placeholder names, in order."""

    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str, allowed: Collection[str]) -> Template:
        """Parse ``text``; ValueError for malformed braces or a placeholder not in ``allowed``."""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"malformed template: {exc}") from None
        parts: list[tuple[str, str | None]] = []
        for literal, field, spec, conversion in parsed:
            if field is not None and (field not in allowed or spec or conversion):
                names = ", ".join(f"{{{name}}}" for name in sorted(allowed)) or "none"
                raise ValueError(f"placeholder {{{field}}} is not allowed here (allowed: {names})")
            parts.append((literal, field))
        return cls(tuple(parts))

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(field for _, field in self.parts if field is not None)

    def render(self, values: Mapping[str, str]) -> str:
        """The text with every placeholder replaced by its value from ``values``."""
        out: list[str] = []
        for literal, field in self.parts:
            out.append(literal)
            if field is not None:
                out.append(values[field])
        return "".join(out)


def secret_forms(secrets: Iterable[str]) -> list[bytes]:
    """The byte strings under which ``secrets`` could show up in text a server or script echoes:
    UTF-8 and Latin-1, JSON-escaped (ASCII and UTF-8) and URL-encoded."""
    forms: set[bytes] = set()
    for secret in secrets:
        if not secret:
            continue
        texts = {
            secret,
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
            quote(secret, safe="", errors="surrogatepass"),
            quote_plus(secret, safe="", errors="surrogatepass"),
        }
        for text in texts:
            forms.add(text.encode("utf-8", "surrogatepass"))
            with contextlib.suppress(UnicodeEncodeError):
                forms.add(text.encode("latin-1"))
    return sorted(forms, key=len, reverse=True)


def contains_secret(data: bytes, secrets: Iterable[str]) -> bool:
    """Whether ``data`` contains any of ``secrets`` in any of :func:`secret_forms`."""
    return any(form in data for form in secret_forms(secrets))


def redact(data: bytes, secrets: Iterable[str]) -> bytes:
    """``data`` with every occurrence of ``secrets`` (in any form) replaced by ``[redacted]``."""
    for form in secret_forms(secrets):
        data = data.replace(form, REDACTED.encode("ascii"))
    return data


def one_line(data: bytes, limit: int, *, keep: str = "head") -> str:
    """``data`` decoded leniently, whitespace runs folded to one space, cut to ``limit`` chars.

    ``keep="tail"`` keeps the end instead (where a script prints its final error).
    """
    text = " ".join(data.decode("utf-8", "replace").split())
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    if len(text) <= limit:
        return text
    return text[:limit] + "..." if keep == "head" else "..." + text[-limit:]
