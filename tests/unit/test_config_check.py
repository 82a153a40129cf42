"""`pcns config check`: every problem `pcns serve` would refuse to start with, found in one run,
each naming its key and none showing a secret; nothing written, no database opened."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest

from pcns.cli import config as config_cli
from pcns.config import Role, Settings
from pcns.config_check import Problem, adapter_settings, check_configuration
from targets.base import AdapterUnavailable, load_target_types
from tests.support import ServiceFiles, to_toml, write_secret

UNREACHABLE_DB = "postgresql://pcns@127.0.0.1:1/never"  # nothing listens: a connect would fail
SENTINEL = "Sentinel-Secret-7Qx"


def service(tmp_path: Path, **targets: dict[str, Any]) -> ServiceFiles:
    """A valid service (keyring, admin token, source dc01, htpasswd target wiki) in tmp_path."""
    files = ServiceFiles(tmp_path / "svc", UNREACHABLE_DB)
    for name, fields in targets.items():
        files.targets.append({"name": name, **fields})
    return files


def check(path: Path, role: Role = "all") -> dict[str, list[str]]:
    """The problems of ``path``, grouped by key."""
    found: dict[str, list[str]] = {}
    for problem in check_configuration(path, role=role):
        found.setdefault(problem.key, []).append(problem.message)
    return found


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "pcns.toml"
    path.write_text(to_toml(doc))
    return path


def cli(*argv: str) -> int:
    """``pcns config check ARGV`` through the command's own parser and runner."""
    parser = argparse.ArgumentParser(prog="pcns")
    config_cli.add_config_parser(parser.add_subparsers(dest="command", required=True))
    return config_cli.run(parser.parse_args(["config", "check", *argv]))


def test_a_valid_configuration_has_no_problem(tmp_path: Path) -> None:
    """A configuration `pcns serve` accepts yields no problem for any role, and the command
    exits 0 with a one-line summary of what it found."""
    files = service(tmp_path, bench={"type": "noop", "delay": 0.01})
    path = files.write_config()
    roles: tuple[Role, ...] = ("all", "receiver", "worker")
    for role in roles:
        assert check_configuration(path, role=role) == []


def test_the_summary_counts_targets_and_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clean file exits 0 and prints one line: "configuration ok: 2 targets, 1 source"."""
    path = service(tmp_path, bench={"type": "noop"}).write_config()
    assert cli("--config", str(path)) == 0
    assert capsys.readouterr().out == "configuration ok: 2 targets, 1 source\n"


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    """A file that is not TOML is one problem naming the file, the line and the column."""
    path = tmp_path / "pcns.toml"
    path.write_text('[delivery]\nworkers = 8\nmax_age = "72h\n')
    problems = check_configuration(path, role="all")
    assert problems == [Problem(str(path), problems[0].message)]
    assert problems[0].message.startswith("not valid TOML:")
    assert "line 3, column" in problems[0].message


def test_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    """A configuration file that does not exist is reported, not a traceback."""
    path = tmp_path / "absent.toml"
    assert check_configuration(path, role="all") == [Problem(str(path), "does not exist")]


def test_every_error_of_the_main_settings_is_reported(tmp_path: Path) -> None:
    """Several wrong values across sections are all reported at once, each under its key."""
    doc = service(tmp_path).document()
    doc["server"]["listen"] = "0.0.0.0:8443"
    doc["delivery"] = {"workers": 0, "backoff_initial": "soon", "bogus": 1}
    doc["database"]["pool_size"] = 1
    doc["sources"][0]["id"] = "no spaces allowed"
    doc["serverr"] = {}
    found = check(write(tmp_path, doc))
    assert {
        "server",
        "delivery.workers",
        "delivery.backoff_initial",
        "delivery.bogus",
        "database.pool_size",
        "sources.0.id",
        "serverr",
    } <= set(found)
    assert "not a loopback address" in found["server"][0]


def test_independent_rules_of_one_section_are_reported_together(tmp_path: Path) -> None:
    """Both cross-key rules of [delivery] are reported when both are broken, not only the first."""
    doc = service(tmp_path).document()
    doc["delivery"] = {"backoff_initial": "10s", "backoff_max": "1s", "attempt_timeout": "59s"}
    (message,) = check(write(tmp_path, doc))["delivery"]
    assert "backoff_max must not be shorter than backoff_initial" in message
    assert "attempt_timeout must be at most half of lease" in message


def test_every_target_is_checked_with_its_adapter(tmp_path: Path) -> None:
    """Each broken target is reported (missing and unknown keys, invalid values, unknown type
    naming the installed ones), even when the main settings are wrong too."""
    files = service(
        tmp_path,
        app={"type": "sql", "dsn": "sqlite:////tmp/app.db", "query": "UPDATE u SET h = :acct"},
        typo={"type": "ladp"},
        ok={"type": "noop"},
    )
    files.targets[0] = {"name": "wiki", "type": "htpasswd", "pathh": "x", "hash": "md5"}
    files.delivery = {"workers": 0}
    found = check(files.write_config())
    assert "delivery.workers" in found
    assert sorted(found["targets.0 (wiki)"]) == [
        "hash: Input should be 'bcrypt', 'sha512_crypt' or 'apr1'",
        "path: Field required",
        "pathh: Extra inputs are not permitted",
    ]
    assert any(m.startswith("query: ") for m in found["targets.1 (app)"])
    (unknown,) = found["targets.2.type"]
    assert unknown.startswith("unknown target type 'ladp'; installed: [")
    assert "'htpasswd'" in unknown
    assert not any(key.startswith("targets.3") for key in found)


def test_every_installed_adapter_refuses_unknown_keys() -> None:
    """No installed adapter's settings model accepts a key it does not know, so a typo inside a
    [[targets]] table is always reported."""
    for name, factory in load_target_types().items():
        assert factory.settings_model.model_config.get("extra") == "forbid", name


def test_a_missing_optional_library_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target whose adapter needs a library that is not installed is reported with the extra
    to install, and the other targets are still checked."""
    for module in [m for m in sys.modules if m.startswith(("targets.ldap", "ldap3"))]:
        monkeypatch.delitem(sys.modules, module)  # imported afresh, and restored after the test
    monkeypatch.setitem(sys.modules, "ldap3", None)  # as if ldap3 were not installed
    with pytest.raises(AdapterUnavailable):  # the premise: the adapter cannot be imported
        load_target_types(["ldap"])
    files = service(tmp_path, dir={"type": "ldap", "url": "ldap://127.0.0.1"})
    files.targets[0]["pathh"] = "x"
    found = check(files.write_config())
    assert found["targets.1.type"] == [
        "target type 'ldap' needs the optional package ldap3: pip install 'pcns[ldap]'"
    ]
    assert "targets.0 (wiki)" in found


def test_secret_files_serve_would_refuse_are_all_reported(tmp_path: Path) -> None:
    """A readable source secret, a missing one, a readable admin token and a missing keyring
    are each reported under their own key."""
    files = service(tmp_path)
    files.secret_file.chmod(0o644)
    files.token_file.chmod(0o640)
    files.keyring.unlink()
    doc = files.document()
    doc["sources"].append({"id": "dc02", "secret_file": tmp_path / "absent.whsec"})
    found = check(write(tmp_path, doc))
    assert set(found) == {
        "vault.keyring",
        "sources.0.secret_file",
        "sources.1.secret_file",
        "admin.token_file",
    }
    assert (
        "has mode 0644; group and others must have no access" in found["sources.0.secret_file"][0]
    )
    assert "does not exist" in found["sources.1.secret_file"][0]
    assert "has mode 0640" in found["admin.token_file"][0]
    assert "does not exist (run `pcns keys init`)" in found["vault.keyring"][0]


def test_the_role_decides_which_files_are_read(tmp_path: Path) -> None:
    """As `pcns serve --role`: a worker reads neither the sources' secrets nor the admin token,
    a receiver builds no target, and both need the KEK."""
    files = service(tmp_path, typo={"type": "ladp"})
    files.secret_file.chmod(0o644)
    files.token_file.chmod(0o644)
    files.keyring.chmod(0o644)
    path = files.write_config()
    shared = {"vault.keyring"}
    assert set(check(path, "worker")) == shared | {"targets.1.type"}
    assert set(check(path, "receiver")) == shared | {"sources.0.secret_file", "admin.token_file"}


def test_a_transit_token_file_is_checked(tmp_path: Path) -> None:
    """With a transit KEK the token file must exist with mode 0600; no Vault is contacted."""
    token = write_secret(tmp_path / "bao.token", "s.token")
    token.chmod(0o644)
    files = service(tmp_path)
    files.vault = {"kek": "transit", "transit": {"url": "https://127.0.0.1:1", "token_file": token}}
    found = check(files.write_config())
    assert list(found) == ["vault.transit.token_file"]
    assert "transit KEK: token file" in found["vault.transit.token_file"][0]
    assert "mode 0644" in found["vault.transit.token_file"][0]


def test_duplicate_names_are_reported_beside_other_errors(tmp_path: Path) -> None:
    """Repeated source ids and target names are reported whether or not the rest is valid, once
    each, under the list's name."""
    files = service(tmp_path, wiki={"type": "noop"})
    doc = files.document()
    doc["sources"].append(dict(doc["sources"][0]))
    assert check(write(tmp_path, doc)) == {
        "sources": ["duplicate names ['dc01']"],
        "targets": ["duplicate names ['wiki']"],
    }
    doc["delivery"]["workers"] = 0
    found = check(write(tmp_path, doc))
    assert set(found) == {"delivery.workers", "sources", "targets"}


def test_environment_overrides_apply_as_in_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PCNS_ variable overrides the file in the check as in `pcns serve`, also when another
    setting is invalid."""
    files = service(tmp_path)
    monkeypatch.setenv("PCNS_ADMIN__TOKEN_FILE", str(tmp_path / "from-env.token"))
    assert set(check(files.write_config())) == {"admin.token_file"}
    files.delivery = {"workers": 0}
    found = check(files.write_config())
    assert set(found) == {"delivery.workers", "admin.token_file"}
    assert "from-env.token does not exist" in found["admin.token_file"][0]


def test_tls_files_that_do_not_load_are_reported(tmp_path: Path) -> None:
    """A listener certificate that is missing, or a certificate and key that do not load
    together, is reported as `pcns serve` would fail on it."""
    files = service(tmp_path)
    files.server = {"tls_cert": tmp_path / "absent.pem", "tls_key": files.secret_file}
    assert list(check(files.write_config())) == ["server.tls_cert"]
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    files.server = {"tls_cert": tmp_path / "garbage.pem", "tls_key": files.secret_file}
    (message,) = check(files.write_config())["server.tls_cert"]
    assert message.startswith("does not load with tls_key: ")


def test_no_secret_reaches_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Wrong values that hold secrets (a database URL and a target DSN with passwords, an admin
    token, a malformed source secret) are reported without their values."""
    files = service(
        tmp_path,
        app={
            "type": "sql",
            "dsn": f"postgresql://app:{SENTINEL}@127.0.0.1/app",
            "query": "UPDATE u SET h = :acct",
            "bogus": SENTINEL,
        },
    )
    write_secret(files.secret_file, f"not-whsec-{SENTINEL}")
    write_secret(files.token_file, SENTINEL).chmod(0o644)
    monkeypatch.setenv("PCNS_DATABASE__URL", f"mysql://pcns:{SENTINEL}@db/pcns")
    path = files.write_config()
    assert cli("--config", str(path)) == 1
    out = capsys.readouterr()
    for key in ("database.url", "sources.0.secret_file", "admin.token_file", "targets.1 (app)"):
        assert f"\n{key}: " in "\n" + out.out
    assert SENTINEL not in out.out + out.err


def test_adapter_settings_collects_every_target(tmp_path: Path) -> None:
    """adapter_settings returns the valid targets' adapter settings by name and the problems of
    all the others, for `pcns serve` to report together."""
    settings = Settings(
        targets=(
            {"name": "a", "type": "noop", "delay": 0.5},
            {"name": "b", "type": "noop", "delai": 0.5},
            {"name": "c", "type": "htpasswd"},
        )
    )
    validated, problems = adapter_settings(settings)
    assert list(validated) == ["a"]
    assert [str(p) for p in problems] == [
        "targets.1 (b): delai: Extra inputs are not permitted",
        "targets.2 (c): path: Field required",
    ]


def test_targets_are_probed_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --targets each valid target's check() runs, one line each, and a failing one makes
    the configuration fail."""
    files = service(tmp_path, gone={"type": "htpasswd", "path": tmp_path / "no" / "such.htpasswd"})
    path = files.write_config()
    assert cli("--config", str(path)) == 0
    capsys.readouterr()
    assert cli("--config", str(path), "--targets") == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "targets.0 (wiki): check ok",
        f"targets.1 (gone): check FAILED (PermanentError): directory {tmp_path / 'no'} "
        "does not exist",
    ]
    assert out.err == f"configuration {path}: 1 problem\n"


def test_targets_cannot_be_probed_for_a_receiver(tmp_path: Path) -> None:
    """--targets with --role receiver is a usage error (exit 2): a receiver builds no target."""
    path = service(tmp_path).write_config()
    assert cli("--config", str(path), "--role", "receiver", "--targets") == 2


def test_an_environment_list_that_is_not_json_is_one_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PCNS_TARGETS that is not valid JSON is reported naming the field, without its value."""
    monkeypatch.setenv("PCNS_TARGETS", f'[{{"name": "x", "token": "{SENTINEL}"')
    (problem,) = check_configuration(service(tmp_path).write_config(), role="all")
    assert problem.key == "(environment)"
    assert 'field "targets"' in problem.message
    assert SENTINEL not in problem.message
