"""When a data key must be replaced, and how a new one is named: pure rules, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

from pcns import ids
from pcns.config import VaultSettings
from pcns.queue.keys import DataKeyRow


def new_data_key_id() -> str:
    return ids.new_key_id("dek")


def new_hook_key_id() -> str:
    return ids.new_key_id("hpk")


def due_for_rotation(rows: Sequence[DataKeyRow], settings: VaultSettings) -> str | None:
    """Why the primary must be replaced now (age or encryption count), or None."""
    primary = next((r for r in rows if r.state == "primary"), None)
    if primary is None:
        return None
    if primary.age_seconds >= settings.rotate_after:
        return f"primary older than vault.rotate_after ({settings.rotate_after:.0f}s)"
    if primary.encryptions >= settings.max_encryptions:
        return f"primary reached vault.max_encryptions ({settings.max_encryptions})"
    return None
