"""What the policy may know of the fleet right now, handed in by the dispatcher.

The policy never imports Celery or Redis: it reads this snapshot, so routing
stays a pure function that is fast and easy to test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BudgetLeft:
    """What one budget has left in its current period (``BudgetBook.left`` reads it)."""

    name: str
    scope: str
    left_usd: float
    on_exhausted: str


def scope_matches(scope: str, job: Any) -> bool:
    """Whether a budget's ``scope`` covers ``job`` (fleet, workflow:, tag:, user_tier:)."""
    kind, _, value = scope.partition(":")
    if kind == "fleet":
        return True
    if kind == "workflow":
        return bool(job.workflow == value)
    if kind == "user_tier":
        return str(getattr(job.user_tier, "value", job.user_tier)) == value
    if kind == "tag":
        tags = str((job.metadata or {}).get("tags", ""))
        return value in {t.strip() for t in tags.split(",")}
    return False


@dataclass(frozen=True)
class FleetState:
    queue_depth: dict[str, int] = field(default_factory=dict)  # tier -> messages waiting
    live_workers: dict[str, int] = field(default_factory=dict)  # tier -> worker processes
    service_time_s: dict[str, float] = field(default_factory=dict)  # tier -> recent mean
    open_hosts: frozenset[str] = frozenset()  # hosts whose breaker is open
    session_tiers: dict[str, list[str]] = field(default_factory=dict)  # session -> recent kinds/tiers
    budgets: tuple[BudgetLeft, ...] = ()  # every budget's room in its current period

    def wait_s(self, tier: str) -> float:
        """Estimated queue wait: depth x recent service time / live workers."""
        depth = self.queue_depth.get(tier, 0)
        if depth == 0:
            return 0.0
        workers = max(self.live_workers.get(tier, 1), 1)
        return depth * self.service_time_s.get(tier, 1.0) / workers
