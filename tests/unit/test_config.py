"""Configuration: TOML plus PCNS_ environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcns.app import build_targets
from pcns.config import load_settings, parse_duration
from pcns.errors import ConfigError
from pcns.routing import Identity, MissingAccountField, Router

QUICKSTART = Path(__file__).parents[2] / "deploy" / "examples" / "quickstart.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pcns.toml"
    path.write_text(text)
    return path


def test_quickstart_example_is_valid() -> None:
    """The shipped quickstart config loads and its targets build."""
    settings = load_settings(QUICKSTART)
    assert settings.delivery.max_age == 72 * 3600
    assert sorted(build_targets(settings)) == ["wiki"]


@pytest.mark.parametrize(
    ("value", "seconds"), [("2s", 2), ("15m", 900), ("72h", 259200), ("500ms", 0.5), (3, 3)]
)
def test_durations(value: object, seconds: float) -> None:
    """Durations read as operators write them."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[delivery]\nworkers = "many"\n', "delivery.workers"),
        ('[delivery]\nbackoff_initial = "soon"\n', "delivery.backoff_initial"),
        ('[server]\nlisten = "0.0.0.0:8080"\n', "server"),
        ("[serverr]\n", "serverr"),
        ('[[targets]]\nname = "x"\ntype = "htpasswd"\naccount = "{user.__class__}"\n', "account"),
        ('[database]\nretention = "10m"\n', "database.retention"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    """Each validation error says which key is wrong."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert key in str(info.value)


def test_retention_is_off_unless_set(tmp_path: Path) -> None:
    """History is kept unless database.retention is set; "off" says the same explicitly."""
    assert load_settings(write(tmp_path, "")).database.retention is None
    off = load_settings(write(tmp_path, '[database]\nretention = "off"\n'))
    assert off.database.retention is None
    days = load_settings(write(tmp_path, '[database]\nretention = "90d"\n'))
    assert days.database.retention == 90 * 86400


def test_adapter_settings_errors_name_the_target(tmp_path: Path) -> None:
    """A target's own fields are validated at start and the error names the target and field."""
    path = write(tmp_path, '[[targets]]\nname = "wiki"\ntype = "htpasswd"\nhash = "md5"\n')
    with pytest.raises(ConfigError) as info:
        build_targets(load_settings(path))
    assert "targets.0 (wiki)" in str(info.value)
    assert "hash" in str(info.value)
    assert "path" in str(info.value)


def test_unknown_target_type(tmp_path: Path) -> None:
    """An adapter type that is not installed is named, with those that are."""
    path = write(tmp_path, '[[targets]]\nname = "x"\ntype = "ldapp"\n')
    with pytest.raises(ConfigError, match=r"targets\.0\.type.*ldapp.*htpasswd"):
        build_targets(load_settings(path))


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PCNS_SECTION__KEY beats the file."""
    monkeypatch.setenv("PCNS_DELIVERY__WORKERS", "3")
    monkeypatch.setenv("PCNS_DATABASE__URL", "postgresql://db.example/pcns")
    settings = load_settings(write(tmp_path, "[delivery]\nworkers = 20\n"))
    assert settings.delivery.workers == 3
    assert settings.database.url.get_secret_value() == "postgresql://db.example/pcns"
    assert "db.example" not in repr(settings)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    """A missing file or bad TOML is a one-line error naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\n"))


def test_routing_globs_and_templates() -> None:
    """Include/exclude globs match user names case-insensitively; templates fill the account."""
    settings = load_settings(QUICKSTART)
    router = Router(settings.targets)
    assert [r.target for r in router.routes_for("Alice")] == ["wiki"]
    assert router.routes_for("KRBTGT") == []
    assert router.routes_for("svc_backup") == []
    route = router.routes[0]
    assert route.account(Identity("alice", "CORP", None)) == "alice"


def test_template_missing_field() -> None:
    """A template that needs the domain refuses a change without one."""
    from pcns.config import TargetConfig

    router = Router((TargetConfig(name="erp", type="noop", account="{domain}\\{user}"),))
    assert router.routes[0].account(Identity("bob", "CORP", None)) == "CORP\\bob"
    with pytest.raises(MissingAccountField):
        router.routes[0].account(Identity("bob", None, None))


def test_an_environment_list_that_is_not_json_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PCNS_TARGETS that is not JSON is a ConfigError naming the field, not a traceback, and
    the value is not echoed."""
    monkeypatch.setenv("PCNS_TARGETS", "[not-json-s3cret")
    with pytest.raises(ConfigError, match='field "targets"') as caught:
        load_settings(None)
    assert "s3cret" not in str(caught.value)
