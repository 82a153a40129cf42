"""How the ``http`` target reads an answer: status classification, and ``Retry-After`` (which
the ``scim`` target reads with the same parser).

A rule is an exact status code (``503``) or a class (``"5xx"``). An exact code wins over a
class, so ``transient = [501]`` beside ``permanent = ["5xx"]`` makes 501 alone transient. A code
no rule covers is permanent: an unexpected answer (a redirect, 401, 418) needs a human.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal, TypeVar

Verdict = Literal["done", "permanent", "transient"]
StatusRule = int | str

DEFAULT_RULES: Final[Mapping[Verdict, tuple[StatusRule, ...]]] = {
    "done": ("2xx",),
    "permanent": (400, 404, 409, 422),
    "transient": (408, 429, "5xx"),
}
_CLASS: Final = re.compile(r"[1-5]xx")
_DIGITS: Final = re.compile(r"[0-9]+")
_Rule = TypeVar("_Rule", int, str)


def normalise_rule(rule: StatusRule) -> StatusRule:
    """``rule`` as an int code or an ``"Nxx"`` class; ValueError for anything else."""
    if isinstance(rule, str):
        text = rule.strip().lower()
        if _CLASS.fullmatch(text):
            return text
        if _DIGITS.fullmatch(text):
            rule = int(text)
        else:
            raise ValueError(f"{rule!r} is neither a status code nor a class such as '5xx'")
    if not 100 <= rule <= 599:
        raise ValueError(f"{rule} is not an HTTP status code (100-599)")
    return rule


@dataclass(frozen=True, slots=True)
class StatusTable:
    """Which verdict each status code gets; built once from the three configured lists."""

    exact: Mapping[int, Verdict]
    classes: Mapping[str, Verdict]

    @classmethod
    def build(cls, rules: Mapping[Verdict, Iterable[StatusRule]]) -> StatusTable:
        """ValueError (naming both lists) when one code or class is listed under two verdicts."""
        exact: dict[int, Verdict] = {}
        classes: dict[str, Verdict] = {}
        for verdict, listed in rules.items():
            for raw in listed:
                rule = normalise_rule(raw)
                if isinstance(rule, int):
                    _claim(exact, rule, verdict)
                else:
                    _claim(classes, rule, verdict)
        return cls(exact, classes)

    def classify(self, status: int) -> Verdict:
        verdict = self.exact.get(status) or self.classes.get(f"{status // 100}xx")
        return verdict or "permanent"


def _claim(table: dict[_Rule, Verdict], rule: _Rule, verdict: Verdict) -> None:
    seen = table.setdefault(rule, verdict)
    if seen != verdict:
        raise ValueError(f"{rule!r} is listed in both {seen} and {verdict}")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 §10.2.3), for every HTTP adapter.

    ``delay-seconds`` (ASCII digits only) or an ``HTTP-date`` in any of its three formats
    (IMF-fixdate, RFC 850, asctime; one without a zone is GMT, as every HTTP-date is). None when
    absent or unreadable (a negative or fractional number, words); a date in the past means 0.
    """
    if value is None:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP-dates are always GMT
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
