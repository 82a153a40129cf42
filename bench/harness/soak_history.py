"""The soak's history check: what was acknowledged against what the queue recorded and what the
applications hold. Pure: every input is gathered beforehand.

- LOST: an acknowledged change whose delivery to a target is missing, still open, superseded
  although no newer acknowledged change of the account was delivered there, in another
  non-delivered state without a recorded reason, or recorded delivered while the target's own
  write history never saw its password.
- OUT OF ORDER: a (target, account) whose password is not the newest delivered acknowledged
  one (the newest acknowledged, unless that one ended in a recorded non-delivered state), or a
  write history in which an older password was written after a newer one.
- Duplicates (at-least-once, not a failure): delivered rows attempted more than once, and
  changes the target's write history saw written more than once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# States a delivery may end in without being lost, provided the queue recorded why.
EXPLAINED = frozenset({"failed", "expired", "cancelled", "parked"})


@dataclass(frozen=True)
class Change:
    """An acknowledged change, as the history needs it."""

    account: str
    seq: int
    password: str
    change_id: str


@dataclass(frozen=True)
class Delivery:
    """A delivery row of the queue."""

    state: str
    attempts: int
    last_error: str | None


Key = tuple[str, str]  # (change id, target)


@dataclass
class Verdict:
    acknowledged: int = 0
    states: Counter[str] = field(default_factory=Counter)  # over every (change, target)
    lost: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    not_delivered: list[str] = field(default_factory=list)  # explained: a state and a reason
    attempted_again: int = 0  # delivered rows with more than one attempt
    written_again: int = 0  # changes a target's write history saw more than once
    extra_writes: int = 0  # writes beyond the first of each change
    written_then_superseded: int = 0  # written (a lost lease, say), then recorded superseded
    unknown_writes: int = 0  # writes of no acknowledged password

    @property
    def ok(self) -> bool:
        return not self.lost and not self.out_of_order


def _by_account(changes: Iterable[Change]) -> dict[str, list[Change]]:
    out: dict[str, list[Change]] = defaultdict(list)
    for c in sorted(changes, key=lambda c: c.seq):
        out[c.account].append(c)
    return out


def identify_writes(
    entries: list[tuple[str, str]],
    changes: list[Change],
    matches: Callable[[str, str], bool],
) -> list[tuple[str, int | None]]:
    """Each write (account, stored hash) as (account, seq of the change whose password it
    stores, None: no acknowledged one). Tries the account's changes from the last one
    identified onwards first, the usual case, then the older ones."""
    accounts = _by_account(changes)
    last: dict[str, int] = {}
    out: list[tuple[str, int | None]] = []
    for account, stored in entries:
        mine = accounts.get(account, [])
        start = last.get(account, 0)
        found = None
        for i in [*range(start, len(mine)), *range(start - 1, -1, -1)]:
            if matches(mine[i].password, stored):
                found, last[account] = mine[i].seq, i
                break
        out.append((account, found))
    return out


def check_history(
    changes: list[Change],
    deliveries: dict[Key, Delivery],
    targets: list[str],
    held: dict[tuple[str, str], int | None],
    writes: dict[str, list[tuple[str, int | None]]],
) -> Verdict:
    """``held``: per (target, account), the seq of the acknowledged password the target takes
    now (None: none); ``writes``: per target that keeps a write history, its identified writes
    in order (:func:`identify_writes`)."""
    v = Verdict(acknowledged=len(changes))
    accounts = _by_account(changes)
    for target in targets:
        for account, mine in accounts.items():
            _check_account(v, target, account, mine, deliveries, held.get((target, account)))
    for target, log in writes.items():
        _check_writes(v, target, log, accounts, deliveries)
    return v


def _check_account(
    v: Verdict,
    target: str,
    account: str,
    mine: list[Change],
    deliveries: dict[Key, Delivery],
    held: int | None,
) -> None:
    rows = [deliveries.get((c.change_id, target)) for c in mine]
    delivered = [c.seq for c, d in zip(mine, rows, strict=True) if d and d.state == "delivered"]
    for c, d in zip(mine, rows, strict=True):
        where = f"{target}/{account} seq {c.seq} (change {c.change_id})"
        if d is None:
            v.states["missing"] += 1
            v.lost.append(f"{where}: no delivery row")
            continue
        v.states[d.state] += 1
        if d.state == "delivered":
            v.attempted_again += d.attempts > 1
        elif d.state == "superseded":
            if not any(seq > c.seq for seq in delivered):
                v.lost.append(f"{where}: superseded, but no newer change was delivered")
        elif d.state in EXPLAINED and d.last_error:
            v.not_delivered.append(f"{where}: {d.state}: {d.last_error}")
        else:
            v.lost.append(f"{where}: {d.state} ({d.last_error or 'no reason recorded'})")
    expected = delivered[-1] if delivered else None
    if held != expected:
        newest = mine[-1].seq
        v.out_of_order.append(
            f"{target}/{account}: holds seq {held}, expected {expected} (newest acknowledged"
            f" {newest})"
        )


def _check_writes(
    v: Verdict,
    target: str,
    log: list[tuple[str, int | None]],
    accounts: dict[str, list[Change]],
    deliveries: dict[Key, Delivery],
) -> None:
    times: Counter[tuple[str, int]] = Counter()
    newest: dict[str, int] = {}
    for account, seq in log:
        if seq is None:
            v.unknown_writes += 1
            continue
        times[(account, seq)] += 1
        if seq < newest.get(account, 0):
            v.out_of_order.append(
                f"{target}/{account}: wrote seq {seq} after seq {newest[account]} (write history)"
            )
        newest[account] = max(seq, newest.get(account, 0))
    v.written_again += sum(1 for n in times.values() if n > 1)
    v.extra_writes += sum(n - 1 for n in times.values())
    for account, mine in accounts.items():
        for c in mine:
            d = deliveries.get((c.change_id, target))
            if d is None:
                continue
            written = times[(account, c.seq)] > 0
            if d.state == "delivered" and not written:
                v.lost.append(
                    f"{target}/{account} seq {c.seq} (change {c.change_id}): recorded delivered,"
                    " but the target's write history never saw it"
                )
            elif d.state == "superseded" and written:
                v.written_then_superseded += 1
