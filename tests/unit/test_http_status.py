"""Status classification and Retry-After parsing of the http target, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from targets.http_status import DEFAULT_RULES, StatusTable, Verdict, parse_retry_after

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "done"), (299, "done"), (404, "permanent"), (401, "permanent"), (301, "permanent"),
     (100, "permanent"), (408, "transient"), (429, "transient"), (599, "transient")],
)  # fmt: skip
def test_default_rules(status: int, verdict: str) -> None:
    """The defaults: 2xx done, 408/429/5xx transient, everything else permanent."""
    assert StatusTable.build(DEFAULT_RULES).classify(status) == verdict


def test_exact_code_wins_over_class_and_strings_are_accepted() -> None:
    """``503`` beats ``"5xx"``; ``"503"`` and ``" 5XX "`` are read as a code and a class."""
    table = StatusTable.build({"permanent": [" 5XX "], "transient": ["503"], "done": [204]})
    assert table.classify(503) == "transient"
    assert table.classify(500) == "permanent"
    assert table.classify(200) == "permanent"


@pytest.mark.parametrize(
    "rules",
    [{"done": [200], "permanent": ["200"]}, {"done": ["2xx"], "transient": ["2xx"]},
     {"done": [600]}, {"done": ["2x"]}, {"done": ["0xx"]}],
)  # fmt: skip
def test_bad_or_clashing_rules_are_refused(rules: dict[Verdict, list[int | str]]) -> None:
    """A code or class under two verdicts, or something that is not a status, is refused."""
    with pytest.raises(ValueError, match=r"both|status code"):
        StatusTable.build(rules)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 0 ", 0.0), ("Sat, 01 Mar 2025 12:02:00 GMT", 120.0),
     ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0), ("Saturday, 01-Mar-25 12:00:30 GMT", 30.0),
     ("Sat Mar  1 12:01:00 2025", 60.0), ("Sat, 01 Mar 2025 12:01:00 -0000", 60.0),
     ("Sat, 01 Mar 2025 13:01:00 +0100", 60.0),
     (None, None), ("", None), ("-5", None), ("1.5", None), ("soon", None), ("²", None),
     ("\uff11\uff12", None), ("12 s", None), ("Sat, 32 Mar 2025 12:00:00 GMT", None)],
)  # fmt: skip
def test_retry_after(value: str | None, seconds: float | None) -> None:
    """Delay-seconds and HTTP-dates in all three RFC 9110 formats are read (a zoneless one is
    GMT); a past date is 0; negative, fractional, non-ASCII digits and junk are None."""
    assert parse_retry_after(value, now=NOW) == seconds
