"""What every handler needs, built by the composition root and kept in one ``web.AppKey``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from pcns.health import TargetHealth
from pcns.metrics import Metrics
from pcns.queue.deliveries import DeliveryQueue
from pcns.receiver.committer import GroupCommitter
from pcns.routing import Router
from vault import HookKeyring, Keyring


@dataclass
class ReceiverContext:
    """Everything the handlers need, built by the composition root. Not frozen: a reload
    (``SIGHUP``, :mod:`pcns.reload`) replaces the routing, sources and limits in place; each
    request reads them once, so it sees one configuration or the other."""

    queue: DeliveryQueue
    keys: Keyring
    hook_keys: HookKeyring
    router: Router
    sources: Mapping[str, bytes] = field(repr=False)  # each source's webhook secret
    sealed_sources: frozenset[str]
    admin_token: str | None = field(repr=False)
    metrics: Metrics
    max_body_bytes: int
    timestamp_tolerance: float
    committer: GroupCommitter | None
    target_names: frozenset[str] = frozenset()  # the configured targets (holds name one)
    target_health: TargetHealth | None = None  # a worker's view of its targets (/readyz)


CONTEXT = web.AppKey("pcns_context", ReceiverContext)
RETRY_AFTER_SECONDS = "5"
