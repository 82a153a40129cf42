"""Prometheus metrics, one registry per service instance (no process-wide globals)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pcns import __version__
from pcns.queue.records import TargetQueueStats

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        self.accepted = Counter(
            "pcns_changes_accepted",
            "Password changes committed and acknowledged",
            ["source"],
            registry=r,
        )
        self.replayed = Counter(
            "pcns_changes_replayed",
            "Resent changes answered from the stored response",
            ["source"],
            registry=r,
        )
        self.pruned = Counter(
            "pcns_history_pruned",
            "Finished rows deleted by database.retention (table: changes or deliveries)",
            ["table"],
            registry=r,
        )
        self.rejected = Counter(
            "pcns_changes_rejected",
            "Password-change requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.sealed_opened = Counter(
            "pcns_sealed_changes_opened",
            "Sealed changes opened at intake, by hook key (is an old key still in use?)",
            ["key_id"],
            registry=r,
        )
        self.delivered = Counter(
            "pcns_deliveries_delivered", "Deliveries the target accepted", ["target"], registry=r
        )
        self.failed = Counter(
            "pcns_deliveries_failed",
            "Deliveries that ended failed at once, by reason (integrity, account_template)",
            ["target", "reason"],
            registry=r,
        )
        self.parked = Counter(
            "pcns_deliveries_parked",
            "Deliveries parked for an operator's retry, by reason"
            " (permanent, max_attempts, lease_lost)",
            ["target", "reason"],
            registry=r,
        )
        self.claimed = Counter(
            "pcns_deliveries_claimed", "Deliveries a worker claimed", ["target"], registry=r
        )
        self.last_success = Gauge(
            "pcns_target_last_success_timestamp_seconds",
            "When this worker last delivered to the target (Unix time)",
            ["target"],
            registry=r,
        )
        self.retried = Counter(
            "pcns_deliveries_retried",
            "Attempts that failed transiently and were rescheduled",
            ["target"],
            registry=r,
        )
        self.ended = Counter(
            "pcns_deliveries_ended",
            "Deliveries ended without an attempt (superseded, expired)",
            ["target", "state"],
            registry=r,
        )
        self.latency = Histogram(
            "pcns_delivery_latency_seconds",
            "Time from acceptance to delivery",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "pcns_queue_depth",
            "Open deliveries per target and state",
            ["target", "state"],
            registry=r,
        )
        self.queue_due = Gauge(
            "pcns_queue_due",
            "Pending deliveries due now, of targets not held",
            ["target"],
            registry=r,
        )
        self.queue_held = Gauge(
            "pcns_queue_held", "Pending deliveries of a held target", ["target"], registry=r
        )
        self.target_held = Gauge(
            "pcns_target_held", "1 while an operator holds the target", ["target"], registry=r
        )
        self.hold_until = Gauge(
            "pcns_target_hold_until_timestamp_seconds",
            "Announced end of a target's hold (Unix time; 0 when none)",
            ["target"],
            registry=r,
        )
        self.build_info = Gauge(
            "pcns_build_info", "pcns version and Python version", ["version", "python"], registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.oldest_pending = Gauge(
            "pcns_queue_oldest_pending_seconds",
            "Age of the oldest pending delivery",
            ["target"],
            registry=r,
        )
        self.integrity_failures = Counter(
            "pcns_integrity_failures",
            "Ciphertexts that failed authentication",
            ["target"],
            registry=r,
        )
        self.dek_age = Gauge(
            "pcns_data_key_age_seconds",
            "Age of each live data key (0 once retired)",
            ["key_id"],
            registry=r,
        )
        self.dek_encryptions = Gauge(
            "pcns_data_key_encryptions",
            "Encryptions recorded under each data key",
            ["key_id"],
            registry=r,
        )
        self.ciphertexts_per_key = Gauge(
            "pcns_queued_ciphertexts",
            "Queued ciphertexts under each data key",
            ["key_id"],
            registry=r,
        )
        self.deferred = Counter(
            "pcns_deliveries_deferred",
            "Attempts handed back unused (concurrency cap, rate limit, breaker)",
            ["target"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "pcns_target_breaker_open",
            "1 while a target's circuit breaker is open",
            ["target"],
            registry=r,
        )
        self.database_up = Gauge(
            "pcns_database_up", "1 when the last database call succeeded", registry=r
        )

    def child(self, metric: _Metric, *values: str) -> _Metric:
        """``metric.labels(*values)``, looked up once: for the per-delivery hot path.

        Only for series that are never removed (per-target delivery metrics): a removed series
        would live on here.
        """
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return cast(_Metric, found)

    def observe_ciphertexts(self, key_ids: set[str], counts: dict[str, int]) -> None:
        for kid in sorted(key_ids | set(counts)):
            self.ciphertexts_per_key.labels(kid).set(counts.get(kid, 0))

    def observe_queue(self, targets: list[str], stats: list[TargetQueueStats]) -> None:
        by_target = {s.target: s for s in stats}
        for name in sorted(set(targets) | set(by_target)):
            s = by_target.get(name, TargetQueueStats(name, 0, 0, 0.0))
            self.queue_depth.labels(name, "pending").set(s.pending)
            self.queue_depth.labels(name, "in_flight").set(s.in_flight)
            self.queue_depth.labels(name, "parked").set(s.parked)
            self.queue_due.labels(name).set(s.due)
            self.queue_held.labels(name).set(s.pending if s.held else 0)
            self.target_held.labels(name).set(1 if s.held else 0)
            self.hold_until.labels(name).set(s.hold_until.timestamp() if s.hold_until else 0)
            self.oldest_pending.labels(name).set(s.oldest_pending_seconds)
