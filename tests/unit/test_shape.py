"""The code's shape holds: no import cycles, and no module that has grown into two ideas."""

from __future__ import annotations

from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pcns", "targets", "vault")
MAX_LINES = 400


def test_no_import_cycle_in_the_service_or_its_libraries() -> None:
    """No module imports, directly or through others, a module that imports it (lazy imports
    inside functions count: they only hide a cycle)."""
    graph = grimp.build_graph(*PACKAGES)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            chain = graph.find_shortest_chain(importer=imported, imported=importer)
            if chain is not None:
                cycles.append(" -> ".join((importer, *chain)))
    assert cycles == []


def test_no_module_is_over_the_size_limit() -> None:
    """Every module of pcns, targets, vault and bench stays at most 400 lines (CONVENTIONS:
    roughly 100-300; a longer one is usually two ideas)."""
    too_long = {
        str(path.relative_to(ROOT)): n
        for package in (*PACKAGES, "bench")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert too_long == {}
