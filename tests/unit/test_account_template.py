"""The ``account`` template of a ``[[targets]]`` table: checked at load and rendered by the same
parser the adapters use (``targets.templates.Template``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pcns.config import TargetConfig
from pcns.routing import Identity, MissingAccountField, Route


@pytest.mark.parametrize(
    ("account", "says"),
    [
        ("{user.__class__}", "placeholder {user.__class__} is not allowed"),
        ("{user!r}", "placeholder {user} is not allowed"),
        ("{user:>10}", "placeholder {user} is not allowed"),
        ("{sid}", "placeholder {sid} is not allowed here (allowed: {domain}, {upn}, {user})"),
        ("{user", "malformed template"),
        ("user}", "malformed template"),
    ],
)
def test_bad_templates_are_refused_naming_the_key(account: str, says: str) -> None:
    """A placeholder that is not user, domain or upn, a format spec or a stray brace is refused
    at load with an error on the ``account`` key."""
    with pytest.raises(ValidationError) as info:
        TargetConfig(name="app", type="noop", account=account)
    (error,) = info.value.errors()
    assert error["loc"] == ("account",)
    assert says in error["msg"]


@pytest.mark.parametrize(
    ("account", "who", "expected"),
    [
        ("{user}", Identity("alice", None, None), "alice"),
        ("{domain}\\{user}", Identity("bob", "CORP", None), "CORP\\bob"),
        ("{upn}", Identity("carol", None, "carol@corp.example"), "carol@corp.example"),
        ("{{literal}}-{user}", Identity("dave", None, None), "{literal}-dave"),
        ("{user}@{domain}", Identity("{domain}", "CORP", None), "{domain}@CORP"),
    ],
)
def test_account_names_are_rendered_from_the_change(
    account: str, who: Identity, expected: str
) -> None:
    """Placeholders take the change's fields verbatim and once: doubled braces are literal, and
    a user name that looks like a placeholder is not expanded."""
    route = Route.from_config(TargetConfig(name="app", type="noop", account=account))
    assert route.account(who) == expected


def test_the_first_missing_field_is_named() -> None:
    """A change without a field the template needs is refused, naming the first such field."""
    route = Route.from_config(TargetConfig(name="app", type="noop", account="{upn}/{domain}"))
    with pytest.raises(MissingAccountField) as info:
        route.account(Identity("bob", None, None))
    assert info.value.field == "upn"
