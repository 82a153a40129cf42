"""What the admin API accepts and returns: delivery filters, bulk actions, holds.

Every refusal names the field and never echoes the value (a filter can carry an account name).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from pcns.queue.operations import MAX_PAGE, DeliveryFilter, OperatorAction
from pcns.queue.records import DeliveryState, DeliveryView, TargetHold

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ACTOR_MAX = 200


class FilterRejected(Exception):
    """A filter, page or action body is not valid; ``detail`` names the fields."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FilterIn(BaseModel):
    """The filter fields, the same for a list (query string) and a bulk action (JSON body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: list[DeliveryState] = Field(default_factory=list)
    target: Name | None = None
    account: Name | None = None
    source: Name | None = None
    change_id: uuid.UUID | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None

    @field_validator("account", "target", "source")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text")
        return value

    def to_filter(self) -> DeliveryFilter:
        return DeliveryFilter(
            states=tuple(dict.fromkeys(self.state)),
            target=self.target,
            account=self.account,
            source=self.source,
            change_id=self.change_id,
            since=self.since,
            until=self.until,
        )


class ListIn(FilterIn):
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    before: uuid.UUID | None = None  # the last id of the previous page


class BulkIn(FilterIn):
    """A retry or cancel: the filter, ``all`` to mean every delivery on purpose, ``dry_run``
    to count without changing anything."""

    all: bool = False
    dry_run: bool = False


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    until: AwareDatetime | None = None
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


def _refusal(exc: ValidationError) -> FilterRejected:
    parts = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return FilterRejected("; ".join(dict.fromkeys(parts)))


def list_query(query: Mapping[str, str], states: list[str]) -> ListIn:
    """A list request from its query string (``state`` may repeat or be comma-separated)."""
    data: dict[str, Any] = {k: v for k, v in query.items() if k != "state"}
    if states:
        data["state"] = [s for value in states for s in value.split(",") if s]
    try:
        return ListIn.model_validate(data)
    except ValidationError as exc:
        raise _refusal(exc) from None


def parse_json(model: type[BulkIn] | type[HoldIn], body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise FilterRejected("body is not valid JSON") from None
        raise _refusal(exc) from None


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def delivery_json(d: DeliveryView) -> dict[str, object]:
    return {
        "id": str(d.id),
        "change_id": str(d.change_id),
        "source": d.source,
        "user": d.user_name,
        "target": d.target,
        "account": d.account,
        "state": d.state,
        "held": d.held,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": _ts(d.created_at),
        "updated_at": _ts(d.updated_at),
        "next_attempt_at": _ts(d.next_attempt_at),
        "finished_at": _ts(d.finished_at),
    }


def hold_json(h: TargetHold) -> dict[str, object]:
    return {
        "target": h.target,
        "held_at": _ts(h.held_at),
        "until": _ts(h.until),
        "actor": h.actor,
        "reason": h.reason,
    }


def action_json(a: OperatorAction) -> dict[str, object]:
    return {
        "at": _ts(a.at),
        "actor": a.actor,
        "action": a.action,
        "filter": a.filter,
        "count": a.count,
    }
