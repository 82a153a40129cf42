"""Values that cross the queue boundary. None of their reprs shows a ciphertext or password."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple, NewType
from uuid import UUID

from vault import AssociatedData, Sealed

ChangeId = NewType("ChangeId", UUID)
DeliveryId = NewType("DeliveryId", UUID)

DeliveryState = Literal[
    "pending", "in_flight", "parked", "delivered", "failed", "superseded", "expired", "cancelled"
]
DELIVERY_STATES: tuple[DeliveryState, ...] = (
    "pending",
    "in_flight",
    "parked",
    "delivered",
    "failed",
    "superseded",
    "expired",
    "cancelled",
)
# Open: the ciphertext is kept. A parked delivery is open but waits for an operator's retry.
OPEN_STATES: frozenset[DeliveryState] = frozenset({"pending", "in_flight", "parked"})
TERMINAL_STATES: frozenset[DeliveryState] = frozenset(
    {"delivered", "failed", "superseded", "expired", "cancelled"}
)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to insert: pending with its ciphertext, or failed at once with a reason."""

    id: DeliveryId
    target: str
    account: str
    sealed: Sealed | None
    failed_reason: str | None = None

    @property
    def state(self) -> DeliveryState:
        return "pending" if self.failed_reason is None else "failed"


@dataclass(frozen=True, slots=True)
class NewChange:
    id: ChangeId
    source: str
    webhook_id: str
    user: str
    domain: str | None
    upn: str | None
    sid: str | None
    changed_at: datetime | None
    deliveries: tuple[NewDelivery, ...]
    response: str = field(repr=False)  # the JSON body of the 202, replayed for a resend


@dataclass(frozen=True, slots=True)
class Committed:
    """What a submitted change became: ``new`` (queued now) or a resend of a stored one."""

    change_id: ChangeId
    response: str = field(repr=False)  # the 202 body, the same for every resend
    new: bool = True


def binding(delivery_id: UUID, change_id: UUID, target: str, account: str) -> AssociatedData:
    """What a delivery's ciphertext is bound to: its own row. The one mapping from a row to its
    associated data, used to seal (intake), open (worker) and reseal (rewrap)."""
    return AssociatedData(
        delivery_id=str(delivery_id), change_id=str(change_id), target=target, account=account
    )


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this worker holds a lease on, with the ciphertext it must open."""

    id: DeliveryId
    change_id: ChangeId
    target: str
    account: str
    attempts: int
    age_seconds: float
    lease_token: UUID
    sealed: Sealed

    @property
    def associated_data(self) -> AssociatedData:
        return binding(self.id, self.change_id, self.target, self.account)


# "deferred": back to pending without counting the attempt (no slot, breaker open, shutdown).
# "parked": kept with its ciphertext for an operator's retry until delivery.max_age.
OutcomeState = Literal["delivered", "parked", "failed", "expired", "pending", "deferred"]
# Why, as the metrics count it once the outcome is recorded: "retried" (pending again),
# "no_slot" and "probe_failed" (deferred), "permanent", "max_attempts" (parked), "integrity"
# (failed: a ciphertext that does not open can never be delivered).
OutcomeReason = Literal[
    "delivered",
    "retried",
    "no_slot",
    "probe_failed",
    "permanent",
    "max_attempts",
    "integrity",
    "expired",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended: terminal, or back to ``pending`` after ``delay`` seconds.

    ``postpone_target``: the attempt opened the target's circuit breaker, so every pending
    delivery of the target is postponed this many seconds once the outcome is recorded.
    """

    delivery: ClaimedDelivery
    state: OutcomeState
    error: str | None = None
    delay: float = 0.0
    reason: OutcomeReason = "delivered"
    postpone_target: float | None = None
    # The attempt timed out with its request perhaps still on the way: for this many seconds it
    # may yet reach the target (a newer change delivered meanwhile is written again after).
    doubt: float = 0.0


class Recorded(NamedTuple):
    """An outcome as written: the delivery's accept-to-now age, and ``again``: delivered, but to
    be written once more when an older change's timed-out attempt can no longer land."""

    age: float
    again: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    target: str
    account: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ChangeStatus:
    id: ChangeId
    source: str
    user: str
    domain: str | None
    received_at: datetime
    deliveries: tuple[DeliveryStatus, ...]


@dataclass(frozen=True, slots=True)
class TargetQueueStats:
    target: str
    pending: int
    in_flight: int
    oldest_pending_seconds: float
    parked: int = 0
    due: int = 0  # pending and due now (0 while the target is held)
    held: bool = False
    hold_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """One delivery as an operator sees it (no ciphertext, no key)."""

    id: DeliveryId
    change_id: ChangeId
    target: str
    account: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    source: str
    user_name: str
    held: bool


@dataclass(frozen=True, slots=True)
class TargetHold:
    target: str
    held_at: datetime
    until: datetime | None
    actor: str
    reason: str | None
