"""Quality, fallbacks, escalations and cost per route, and the learning loop's alerts.

Why: savings mean nothing if the cheap answers got worse, and a new policy can
move money without anyone noticing. Per route (the routed model, or the policy
version that chose it) this joins the ledger (requests, cost, fallbacks,
escalations) with the labels (the judged quality of the answers). Alerts (seed
004): cost per request up more than ``ledger.alert_cost_increase`` (20%), or the
quality of small-routed answers down more than ``learning.tolerance`` (5%),
against a reference: the previous period (``tierfleet report --check``) or the
current policy version (a rollout's candidate, :meth:`Rollout.guard`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import FleetConfig
from .labels import Label
from .ledger import Ledger, is_job_final

MIN_REQUESTS = 3  # fewer than this says nothing about a route
# Shadow tests (``sh.{id}``) and rubric judges (``judge.{t}``) are what the labels cost,
# not a route's requests: counted in, every small route would look pricier than it is.
LEARNING_CALLS = ("sh.", "judge.")


@dataclass
class RouteStats:
    key: str
    requests: int = 0
    cost_usd: float = 0.0
    fallbacks: int = 0
    escalations: int = 0
    labels: int = 0
    quality_sum: float = 0.0
    small_labels: int = 0
    small_quality_sum: float = 0.0
    small_requests: int = 0  # jobs answered below the strong tier

    @property
    def cost_per_request(self) -> float | None:
        return self.cost_usd / self.requests if self.requests else None

    @property
    def fallback_rate(self) -> float | None:
        return self.fallbacks / self.requests if self.requests else None

    @property
    def escalation_rate(self) -> float | None:
        return self.escalations / self.requests if self.requests else None

    @property
    def quality(self) -> float | None:
        return self.quality_sum / self.labels if self.labels else None

    @property
    def small_quality(self) -> float | None:
        return self.small_quality_sum / self.small_labels if self.small_labels else None

    @property
    def expected_quality(self) -> float | None:
        """Quality of all the route's answers, the strong tier's counting 1 (the reference):
        a policy that sends more jobs small is judged on all its jobs, not on the small ones."""
        q = self.small_quality
        if q is None or not self.requests:
            return None
        share = self.small_requests / self.requests
        return share * q + (1 - share)


@dataclass(frozen=True)
class Alert:
    name: str
    route: str
    value: float
    threshold: float
    reason: str


def route_stats(records: Iterable[Mapping[str, object]], labels: Iterable[Label],
                by: str = "model", strong_tier: str = "paid") -> dict[str, RouteStats]:
    """Stats per ``by`` (``model``, ``tier`` or ``policy_version``) of ledger records and labels.

    A job counts once, under the route of its final record; its cost is every record's.
    """
    out: dict[str, RouteStats] = {}
    cost_of_job: dict[str, float] = defaultdict(float)
    finals: list[Mapping[str, object]] = []
    for rec in records:
        cost_of_job[str(rec["job_id"])] += float(rec.get("cost_usd") or 0.0)  # type: ignore[arg-type]
        if is_job_final(dict(rec)):
            finals.append(rec)
    for rec in finals:
        k = str(rec.get(by) or "-")
        s = out.setdefault(k, RouteStats(k))
        s.requests += 1
        s.cost_usd += cost_of_job[str(rec["job_id"])]
        s.fallbacks += int(bool(rec.get("job_fallback")))
        s.escalations += int(bool(rec.get("job_escalated")))
        s.small_requests += int(rec.get("tier") != strong_tier)
    for lb in labels:
        k = str(getattr(lb, by, None) or "-")
        s = out.setdefault(k, RouteStats(k))
        score = lb.small_score if lb.routed_small else lb.large_score
        if score is not None:
            s.labels += 1
            s.quality_sum += score
        if lb.routed_small and lb.small_score is not None:
            s.small_labels += 1
            s.small_quality_sum += lb.small_score
    return out


def compare_routes(now: Mapping[str, RouteStats], before: Mapping[str, RouteStats], *,
                   cost_rise: float = 0.20, quality_drop: float = 0.05,
                   pairs: Iterable[tuple[str, str]] | None = None,
                   quality: str = "small_quality") -> list[Alert]:
    """Alerts of ``now`` against ``before``, route by route (or the given (now, before) pairs)."""
    alerts: list[Alert] = []
    for k_now, k_before in pairs if pairs is not None else ((k, k) for k in now if k in before):
        a, b = now.get(k_now), before.get(k_before)
        if a is None or b is None:
            continue
        name = k_now if k_now == k_before else f"{k_now} vs {k_before}"
        ca, cb = a.cost_per_request, b.cost_per_request
        if (ca is not None and cb is not None and a.requests >= MIN_REQUESTS
                and b.requests >= MIN_REQUESTS):
            rise = (ca / cb - 1) if cb > 0 else (float("inf") if ca > 0 else 0.0)
            if rise > cost_rise:
                alerts.append(Alert("cost_per_request", name, rise, cost_rise,
                                    f"{name}: cost per request rose {rise:.0%} (${cb:.6f} -> "
                                    f"${ca:.6f}), above {cost_rise:.0%}"))
        qa, qb = getattr(a, quality), getattr(b, quality)
        if qa is not None and qb is not None and qb > 0 and a.small_labels >= MIN_REQUESTS:
            drop = 1 - qa / qb
            # Two routes' labels are samples: a gap inside two standard errors is noise, and
            # an alert on noise would roll back every candidate (the month's test met one).
            pq = (qa * a.small_labels + qb * b.small_labels) / (a.small_labels + b.small_labels)
            se = math.sqrt(max(pq * (1 - pq), 1e-9) * (1 / a.small_labels + 1 / max(b.small_labels, 1)))
            if qb - qa <= 2 * se:
                drop = 0.0
            what = "small-routed answers" if quality == "small_quality" else "all answers"
            if drop > quality_drop:
                alerts.append(Alert(quality, name, drop, quality_drop,
                                    f"{name}: quality of {what} fell {drop:.0%} "
                                    f"({qb:.3f} -> {qa:.3f}), above {quality_drop:.0%}"))
    return alerts


def rollout_alerts(stats: Mapping[str, RouteStats], current: str, candidate: str, *,
                   cost_rise: float = 0.20, quality_drop: float = 0.05) -> list[Alert]:
    """A candidate's routes against the current version's, over the same period. Quality is
    that of all their answers (``expected_quality``): a candidate that keeps more jobs small
    has a lower small-routed score by construction, which is the point of it."""
    return compare_routes(stats, stats, cost_rise=cost_rise, quality_drop=quality_drop,
                          pairs=[(candidate, current)], quality="expected_quality")


def is_route_record(rec: Mapping[str, object]) -> bool:
    """A ledger record of a producer's job (not a shadow test's or a judge's call)."""
    return not str(rec.get("job_id", "")).startswith(LEARNING_CALLS)


@dataclass
class PeriodRoutes:
    """Route stats of a period (``now``) and of the period of the same length before it,
    and the alerts of one against the other; what ``tierfleet report --check`` and the
    exporter's ``tierfleet_route_*`` gauges show, computed once here so they agree."""

    by: str
    start: float
    end: float
    now: dict[str, RouteStats]
    before: dict[str, RouteStats]
    alerts: list[Alert] = field(default_factory=list)


Records = Callable[[float, float], Iterable[Mapping[str, Any]]]
Labels = Callable[[float, float], Iterable[Label]]


def ledger_records(config: FleetConfig, client: Any, sql_url: str | None = None) -> Records:
    """The ledger's ``raw_between``: the SQL ledger at ``sql_url`` (default ``ledger.url``;
    ``""`` reads Redis), else Redis's day lists (which a SQL-backed fleet does not keep)."""
    url = config.ledger.url if sql_url is None else sql_url
    if url:
        from .ledger_sql import SqlLedger  # SQLAlchemy only for SQL reads

        return SqlLedger(url).raw_between
    return Ledger(client, config, write_jsonl=False).raw_between


def period_routes(config: FleetConfig, records: Records, labels: Labels, *, end: float,
                  seconds: float, by: str = "model") -> PeriodRoutes:
    """Stats per route over ``(end - seconds, end]`` and the period before, and their alerts.

    ``records(start, end)`` gives ledger record dicts with ``start < ts <= end`` (what
    :meth:`Ledger.raw_between` returns), ``labels(start, end)`` the labels of about that
    span (filtered here to the same half-open interval, so none counts in both periods).
    Thresholds: ``ledger.alert_cost_increase`` and ``learning.tolerance``.
    """
    strong = config.learning.shadow.strong_tier

    def stats(a: float, b: float) -> dict[str, RouteStats]:
        recs = [r for r in records(a, b) if is_route_record(r)]
        lbs = [lb for lb in labels(a, b) if a < (lb.ts or 0.0) <= b]
        return route_stats(recs, lbs, by=by, strong_tier=strong)

    start = end - seconds
    now, before = stats(start, end), stats(start - seconds, start)
    alerts = compare_routes(now, before, cost_rise=config.ledger.alert_cost_increase,
                            quality_drop=config.learning.tolerance)
    return PeriodRoutes(by=by, start=start, end=end, now=now, before=before, alerts=alerts)
