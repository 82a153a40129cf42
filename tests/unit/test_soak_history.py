"""The kill -9 soak's history check (bench/harness/soak_history.py) fails the histories it
must: a checker that cannot fail would prove nothing about the soak's "0 lost, 0 out of order"."""

from __future__ import annotations

from bench.harness.soak_history import (
    Change,
    Delivery,
    check_history,
    identify_writes,
)

TARGETS = ["wiki", "app"]
Rows = dict[tuple[str, str], Delivery]


def _changes(*seqs: int, account: str = "alice") -> list[Change]:
    return [Change(account, s, f"pw-{s}", f"c{s}") for s in seqs]


def _rows(states: dict[int, str], target: str = "app", **extra: Delivery) -> Rows:
    rows = {(f"c{s}", target): Delivery(state, 1, None) for s, state in states.items()}
    for key, row in extra.items():
        rows[(key, target)] = row
    return rows


def _everywhere(states: dict[int, str]) -> Rows:
    return {**_rows(states, "wiki"), **_rows(states, "app")}


def test_a_clean_history_passes() -> None:
    """Every change delivered or superseded by a newer delivered one, each target holding the
    newest password and writing in order: nothing lost, nothing out of order."""
    changes = _changes(1, 2, 3)
    v = check_history(
        changes,
        _everywhere({1: "delivered", 2: "superseded", 3: "delivered"}),
        TARGETS,
        {("wiki", "alice"): 3, ("app", "alice"): 3},
        {"app": [("alice", 1), ("alice", 3)]},
    )
    assert v.ok
    assert (v.acknowledged, v.states["delivered"], v.states["superseded"]) == (3, 4, 2)


def test_missing_open_and_unexplained_deliveries_are_lost() -> None:
    """A change with no delivery row, one still pending, one superseded although no newer change
    was delivered and one failed without a reason are each reported lost."""
    changes = _changes(1, 2, 3, 4)
    rows = _everywhere({1: "delivered", 2: "pending", 3: "superseded", 4: "failed"})
    del rows[("c1", "wiki")]
    v = check_history(changes, rows, TARGETS, {("wiki", "alice"): None, ("app", "alice"): 1}, {})
    assert len(v.lost) == 7  # c1 on wiki; c2, c3, c4 on both
    assert any("no delivery row" in line for line in v.lost)
    assert not v.ok


def test_a_failure_with_a_recorded_reason_is_not_lost() -> None:
    """The newest change failed with a reason: not lost, and the target may hold the newest
    delivered password."""
    changes = _changes(1, 2)
    rows = _rows({1: "delivered"}, c2=Delivery("failed", 12, "permission denied"))
    v = check_history(changes, rows, ["app"], {("app", "alice"): 1}, {})
    assert v.ok
    assert v.not_delivered == ["app/alice seq 2 (change c2): failed: permission denied"]


def test_an_older_password_at_the_target_is_out_of_order() -> None:
    """The target holds seq 1 although seq 2 was delivered after it."""
    changes = _changes(1, 2)
    v = check_history(
        changes, _rows({1: "delivered", 2: "delivered"}), ["app"], {("app", "alice"): 1}, {}
    )
    assert v.out_of_order == ["app/alice: holds seq 1, expected 2 (newest acknowledged 2)"]
    assert not v.ok


def test_an_older_write_after_a_newer_one_is_out_of_order() -> None:
    """The final password is right, but the write history shows seq 1 written after seq 2."""
    changes = _changes(1, 2)
    v = check_history(
        changes,
        _rows({1: "delivered", 2: "delivered"}),
        ["app"],
        {("app", "alice"): 2},
        {"app": [("alice", 2), ("alice", 1), ("alice", 2)]},
    )
    assert v.out_of_order == ["app/alice: wrote seq 1 after seq 2 (write history)"]


def test_delivered_but_never_written_is_lost() -> None:
    """A delivery recorded delivered whose password the target's write history never saw."""
    changes = _changes(1, 2)
    v = check_history(
        changes,
        _rows({1: "delivered", 2: "delivered"}),
        ["app"],
        {("app", "alice"): 2},
        {"app": [("alice", 2)]},
    )
    assert v.lost == [
        "app/alice seq 1 (change c1): recorded delivered, but the target's write history never"
        " saw it"
    ]


def test_duplicates_are_counted_not_failed() -> None:
    """At-least-once: a change attempted twice and written twice, and a superseded change that
    was written before it was superseded, are counted, and the run still passes."""
    changes = _changes(1, 2)
    rows = _rows({1: "superseded"}, c2=Delivery("delivered", 2, None))
    v = check_history(
        changes,
        rows,
        ["app"],
        {("app", "alice"): 2},
        {"app": [("alice", 1), ("alice", 2), ("alice", 2), ("alice", None)]},
    )
    assert v.ok
    assert (v.attempted_again, v.written_again, v.extra_writes) == (1, 1, 1)
    assert (v.written_then_superseded, v.unknown_writes) == (1, 1)


def test_writes_are_matched_to_the_changes_whose_passwords_they_store() -> None:
    """Each logged hash is traced back to its change, in any order, per account."""
    changes = _changes(1, 3) + _changes(2, account="bob")
    entries = [("alice", "h:pw-1"), ("bob", "h:pw-2"), ("alice", "h:pw-3"), ("alice", "h:pw-1")]
    found = identify_writes(entries, changes, lambda pw, stored: stored == "h:" + pw)
    assert found == [("alice", 1), ("bob", 2), ("alice", 3), ("alice", 1)]
    assert identify_writes([("alice", "h:other")], changes, lambda a, b: False) == [("alice", None)]
