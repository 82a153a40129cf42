"""From a verified, validated change to the rows to commit: route, then seal per target."""

from __future__ import annotations

import orjson

from pcns.ids import uuid7
from pcns.queue.records import ChangeId, DeliveryId, NewChange, NewDelivery, binding
from pcns.receiver.models import BodyRejected, PasswordChangeIn, check_password
from pcns.routing import Identity, MissingAccountField, Router
from vault import HookKeyring, IntegrityError, KeyProvider, KeyringError, seal


def change_password(
    body: PasswordChangeIn, *, source: str, webhook_id: str, hook_keys: HookKeyring
) -> str:
    """The new password: as sent, or opened from ``sealed`` with the context it is bound to.

    :class:`BodyRejected` when a sealed password does not open; the detail names the field and
    the key id, never anything of the ciphertext.
    """
    if body.sealed is None:
        assert body.password is not None  # the model requires exactly one
        return body.password.get_secret_value()
    key_id = body.sealed.key_id
    try:
        opened = hook_keys.open(
            key_id, body.sealed.ciphertext, source=source, webhook_id=webhook_id, user=body.user
        )
    except KeyringError:
        raise BodyRejected(
            f"sealed.key_id: {key_id} is not an active hook key (unknown or retired)"
        ) from None
    except IntegrityError:
        raise BodyRejected(
            f"sealed: does not open with hook key {key_id} (tampered, or sealed for another "
            "source, webhook-id or user)"
        ) from None
    return check_password(opened)


def build_change(
    body: PasswordChangeIn,
    password: str,
    *,
    source: str,
    webhook_id: str,
    router: Router,
    keys: KeyProvider,
) -> NewChange:
    """One delivery per matching target, each sealed and bound to its own row."""
    change_id = ChangeId(uuid7())
    change_text = str(change_id)
    who = Identity(user=body.user, domain=body.domain, upn=body.upn)
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
        ad = binding(delivery_id, change_id, route.target, account)
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
