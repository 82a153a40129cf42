"""Which configuration changes a reload refuses because they need a restart."""

from __future__ import annotations

from pathlib import Path

from pcns.config import Settings
from pcns.reload import fixed_changes


def settings(**sections: object) -> Settings:
    base: dict[str, object] = {"vault": {"keyring": Path("/k.json")}}
    return Settings(**{**base, **sections})  # type: ignore[arg-type]


def test_listener_database_kek_and_claimers_need_a_restart() -> None:
    """Changing the listen address, the database, the KEK provider or the claimer count is
    named as needing a restart; the rest of a section may change live."""
    old = settings()
    new = settings(
        server={"listen": "127.0.0.1:9999", "max_body_bytes": 2048},
        database={"pool_size": 3},
        delivery={"claimers": 3, "max_attempts": 4},
    )
    assert fixed_changes(old, new) == ["server.listen", "database.pool_size", "delivery.claimers"]


def test_live_changes_are_not_refused() -> None:
    """Delivery settings, intake limits and targets change without a restart."""
    old = settings()
    new = settings(
        server={"max_body_bytes": 2048, "timestamp_tolerance": "60s"},
        delivery={"max_attempts": 4, "backoff_max": "10m"},
        targets=[{"name": "wiki", "type": "noop"}],
    )
    assert fixed_changes(old, new) == []
