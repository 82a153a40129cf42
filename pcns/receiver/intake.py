"""From a verified, validated change to the rows to commit: route, then seal per target."""

from __future__ import annotations

import orjson

from pcns.ids import uuid7
from pcns.queue.records import ChangeId, DeliveryId, NewChange, NewDelivery
from pcns.receiver.models import PasswordChangeIn
from pcns.routing import Identity, MissingAccountField, Router
from vault import AssociatedData, KeyProvider, seal


def build_change(
    body: PasswordChangeIn, *, source: str, webhook_id: str, router: Router, keys: KeyProvider
) -> NewChange:
    """One delivery per matching target, each sealed and bound to its own row."""
    change_id = ChangeId(uuid7())
    change_text = str(change_id)
    who = Identity(user=body.user, domain=body.domain, upn=body.upn)
    password = body.password.get_secret_value()
    deliveries = []
    for route in router.routes_for(body.user):
        delivery_id = DeliveryId(uuid7())
        try:
            account = route.account(who)
        except MissingAccountField as exc:
            deliveries.append(
                NewDelivery(delivery_id, route.target, "", sealed=None, failed_reason=str(exc))
            )
            continue
        ad = AssociatedData(str(delivery_id), change_text, route.target, account)
        deliveries.append(NewDelivery(delivery_id, route.target, account, seal(keys, password, ad)))
    response = orjson.dumps(
        {
            "id": change_text,
            "deliveries": [{"target": d.target, "state": d.state} for d in deliveries],
        }
    ).decode()
    return NewChange(
        id=change_id,
        source=source,
        webhook_id=webhook_id,
        user=body.user,
        domain=body.domain,
        upn=body.upn,
        sid=body.sid,
        changed_at=body.changed_at,
        deliveries=tuple(deliveries),
        response=response,
    )
