"""Adapters load on demand: only the configured types are imported, and a type whose adapter or
optional library cannot be imported is reported by name without stopping the others.

Import side effects (``sys.modules``) are observed in a fresh interpreter, since this test
process may have imported every adapter already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from targets.base import (
    OPTIONAL_EXTRAS,
    AdapterUnavailable,
    installed_target_types,
    load_target_types,
)

BUILT_IN = {"htpasswd", "sql", "noop", "http", "command", "scim", "ldap"}
OPTIONAL_MODULES = ("ldap3", "scim2_models", "aiosqlite", "aiomysql")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def run_python(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_only_the_named_types_are_imported() -> None:
    """Loading htpasswd imports neither the other adapters nor ldap3, scim2-models or the SQL
    drivers."""
    result = run_python(
        """
        import json, sys
        from targets.base import load_target_types
        loaded = load_target_types(["htpasswd"])
        modules = ["targets.ldap", "targets.scim", "targets.sql", "targets.http",
                   "ldap3", "scim2_models", "aiosqlite", "aiomysql"]
        print(json.dumps({"loaded": sorted(loaded),
                          "imported": [m for m in modules if m in sys.modules]}))
        """
    )
    assert result == {"loaded": ["htpasswd"], "imported": []}


def test_installed_types_are_listed_without_importing_any() -> None:
    """installed_target_types names all seven built-in types and imports no adapter module."""
    result = run_python(
        """
        import json, sys
        from targets.base import installed_target_types
        names = installed_target_types()
        print(json.dumps({"names": names,
                          "imported": [m for m in sys.modules if m.startswith("targets.")
                                       and m != "targets.base"]}))
        """
    )
    assert set(result["names"]) >= BUILT_IN
    assert result["names"] == sorted(result["names"])
    assert result["imported"] == []


def test_unknown_names_are_absent_from_the_result() -> None:
    """A name without an entry point is left out, for the caller to report; the rest load."""
    loaded = load_target_types(["noop", "no-such-type"])
    assert set(loaded) == {"noop"}
    assert "no-such-type" not in installed_target_types()


def test_without_names_every_installed_type_loads() -> None:
    """The zero-argument form still loads every installed adapter, each with a settings model."""
    loaded = load_target_types()
    assert set(loaded) >= BUILT_IN
    assert all(hasattr(factory, "settings_model") for factory in loaded.values())


@pytest.mark.parametrize(
    ("target_type", "module", "extra"),
    [("ldap", "ldap3", "ldap"), ("scim", "scim2_models", "scim")],
)
def test_missing_optional_library_names_the_extra(
    target_type: str, module: str, extra: str
) -> None:
    """A configured type whose optional library is missing fails with a message naming the
    type, the module and the extra to install, while the other types still load."""
    result = run_python(
        f"""
        import json, sys
        sys.modules[{module!r}] = None  # as if the library were not installed
        from targets.base import AdapterUnavailable, load_target_types
        others = sorted(load_target_types(["htpasswd", "sql", "http", "command", "noop"]))
        try:
            load_target_types([{target_type!r}])
        except AdapterUnavailable as exc:
            print(json.dumps({{"message": str(exc), "type": exc.target_type,
                               "chained": exc.__cause__ is not None, "others": others}}))
        """
    )
    assert result == {
        "message": f"target type {target_type!r} needs the optional package {module}: "
        f"pip install 'pcns[{extra}]'",
        "type": target_type,
        "chained": False,
        "others": ["command", "htpasswd", "http", "noop", "sql"],
    }


def test_sql_loads_without_its_optional_drivers() -> None:
    """The sql adapter imports without aiosqlite and aiomysql; only their DSNs need them."""
    result = run_python(
        """
        import json, sys
        sys.modules["aiosqlite"] = None
        sys.modules["aiomysql"] = None
        from pydantic import ValidationError
        from targets.base import load_target_types
        sql = load_target_types(["sql"])["sql"]
        try:
            query = "UPDATE u SET h = :hash WHERE n = :account"
            sql.settings_model.model_validate({"dsn": "sqlite:////tmp/app.db", "query": query})
        except ValidationError as exc:
            print(json.dumps({"error": exc.errors()[0]["msg"]}))
        """
    )
    assert "needs the aiosqlite package: pip install 'pcns[sqlite]'" in result["error"]


def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Install (on sys.path) a package ``pcns-thirdparty`` registering type ``third`` whose
    module holds ``source``; returns the module name."""
    module = f"pcns_thirdparty_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / "pcns_thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pcns-thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[pcns.targets]\nthird = {module}:ThirdTarget\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def test_third_party_adapter_failing_on_import_is_named_without_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adapter that raises while importing is reported by type and exception type only (its
    message, which may carry a secret, is neither shown nor chained), and stops no other type."""
    module = third_party(
        tmp_path, monkeypatch, 'raise RuntimeError("token=Sentinel-Secret-42 is invalid")\n'
    )
    assert "third" in installed_target_types()
    assert set(load_target_types(["htpasswd"])) == {"htpasswd"}
    with pytest.raises(AdapterUnavailable) as caught:
        load_target_types(["htpasswd", "third"])
    message = str(caught.value)
    assert message.startswith(f"target type 'third': importing {module}:ThirdTarget failed")
    assert "RuntimeError" in message
    assert "Sentinel-Secret-42" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_third_party_adapter_missing_a_module_names_module_and_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third-party adapter whose own dependency is missing names that module and its package."""
    third_party(tmp_path, monkeypatch, "import pcns_test_module_that_does_not_exist\n")
    with pytest.raises(AdapterUnavailable) as caught:
        load_target_types(["third"])
    assert str(caught.value) == (
        "target type 'third' (from the package pcns-thirdparty) needs the module "
        "pcns_test_module_that_does_not_exist, which is not installed"
    )


def test_entry_point_that_is_not_an_adapter_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry point naming something without a settings model is reported, not constructed."""
    module = third_party(tmp_path, monkeypatch, "class ThirdTarget:\n    pass\n")
    with pytest.raises(AdapterUnavailable, match="is not an adapter") as caught:
        load_target_types(["third"])
    assert f"{module}:ThirdTarget" in str(caught.value)


def test_every_suggested_extra_exists_and_installs_its_library() -> None:
    """Each extra an AdapterUnavailable message suggests is in pyproject.toml, is part of
    ``all``, and no optional library is a default dependency."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    for module, extra in OPTIONAL_EXTRAS.items():
        assert extra in extras, module
        assert extra in extras["all"][0]
    assert "pcns[all]" in extras["test"]
    required = " ".join(project["dependencies"]).lower()
    for library in ("ldap3", "scim2-models", "aiomysql", "aiosqlite"):
        assert library not in required
        assert any(library in spec for specs in extras.values() for spec in specs)
