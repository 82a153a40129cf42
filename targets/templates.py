"""Text templates with named ``{field}`` placeholders, checked at load and rendered by hand.

The syntax is ``str.format``'s (``{account}``; ``{{`` and ``}}`` for literal braces), but only
bare names from an allow-list are accepted: no format specs, conversions, attribute or index
access. Rendering substitutes each value verbatim and once, so a value that itself looks like a
placeholder (a password containing ``{account}``) is never expanded. The service parses its
``account`` template with this class too.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass


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
