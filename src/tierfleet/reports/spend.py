"""Where the money went: spend, tokens, latency and savings over a period, and the alerts.

Every figure is computed from the ledger's raw records in Redis (one list per
UTC day, shared by all machines), so a report run anywhere sees every worker.
Money is summed in integer nano-dollars, so the totals equal the sum of the
rows exactly.

How each figure is counted (see :mod:`tierfleet.ledger` for the records):

- spend, tokens, attempts: every attempt in the period, in the group of the
  attempt itself (a job that fell from local-gpu to runpod bills both);
- jobs, latency, fallback/escalation/cache-hit rates, tier share: one per job,
  on its final attempt (ok, failed or cached); a job's latency is the sum of
  its attempts' latencies in the period;
- baseline: what each job would have cost on the baseline model, counted once
  per job; savings = baseline - spend;
- monthly projection: spend per observed day x 30, where the observed days run
  from the first record in the period (or its start) to its end, at least one.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import redis as redis_lib
from pydantic import BaseModel, Field

from ..config import FleetConfig, get_config
from ..labels import LabelStore
from ..ledger import Ledger, is_job_final
from ..pricing import from_nanos, to_nanos
from ..routequality import PeriodRoutes, ledger_records, period_routes
from .charts import plot_bars, usd

__all__ = [
    "MAX_SINCE_DAYS",
    "Alert",
    "GroupBy",
    "Report",
    "Row",
    "Thresholds",
    "build_report",
    "check",
    "parse_since",
    "plot_bars",
    "plot_report",
    "previous_report",
    "report",
    "route_check",
]

GroupBy = Literal["workflow", "tier", "model", "kind"]
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([hdw]?)\s*$")
_UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}
DAYS_PER_MONTH = 30
# The longest period a report or a training run reads: ten years is far more than any
# ledger holds, and a bound keeps the period's start a date that time and datetime can
# represent (99999999d was a year -271764, or an OverflowError).
MAX_SINCE_DAYS = 3650


def parse_since(since: str | float) -> float:
    """'30d', '12h', '2w' or a bare number of days -> seconds (above 0, at most
    :data:`MAX_SINCE_DAYS` days)."""
    if isinstance(since, int | float):
        seconds = float(since) * 86400
    else:
        m = _SINCE.match(since)
        if not m:
            raise ValueError(f"since: expected e.g. 30d, 12h or 2w, got {since!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    # Written so that NaN (a float passed in) is refused too.
    if not 0 < seconds <= MAX_SINCE_DAYS * 86400:
        raise ValueError(f"since must be above 0 and at most {MAX_SINCE_DAYS}d, got {since!r}")
    return seconds


class Thresholds(BaseModel):
    alert_cost_increase: float
    max_fallback_rate: float
    max_escalation_rate: float


class Row(BaseModel):
    key: str
    jobs: int
    attempts: int
    tokens_in: int
    tokens_out: int
    spend_usd: float
    baseline_usd: float
    savings_usd: float
    savings_fraction: float | None
    cost_per_job_usd: float | None
    job_share: float
    spend_share: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    fallback_rate: float | None
    escalation_rate: float | None
    cache_hit_rate: float | None
    estimated_tokens_share: float | None


class Report(BaseModel):
    since: str
    by: GroupBy
    start: float
    end: float
    baseline_model: str | None
    jobs: int
    attempts: int
    tokens_in: int
    tokens_out: int
    spend_usd: float
    baseline_usd: float
    savings_usd: float
    savings_fraction: float | None
    cost_per_job_usd: float | None
    tier_share: dict[str, float] = Field(description="share of jobs that finished on each tier")
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    fallback_rate: float | None
    escalation_rate: float | None
    cache_hit_rate: float | None
    estimated_tokens_share: float | None
    simulated_attempts: int = Field(description="attempts answered by simulated hosts")
    baseline_basis: str = Field(
        default="", description="what the savings compare with, in words")
    warnings: list[str] = Field(default_factory=list,
                                description="what makes these figures look better than they are")
    observed_days: float
    monthly_spend_usd: float
    monthly_baseline_usd: float
    monthly_savings_usd: float
    rows: list[Row]
    thresholds: Thresholds


class Alert(BaseModel):
    name: Literal["cost_per_job", "fallback_rate", "escalation_rate"]
    value: float
    threshold: float
    reason: str


class _Acc:
    """Running sums for one group (or the whole period)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.jobs = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.estimated = 0
        self.cost_n = 0
        self.baseline_n = 0
        self.fallback_jobs = 0
        self.escalated_jobs = 0
        self.cache_hits = 0
        self.latencies: list[float] = []

    def add_attempt(self, rec: dict[str, Any]) -> None:
        self.attempts += 1
        self.tokens_in += int(rec["tokens_in"])
        self.tokens_out += int(rec["tokens_out"])
        self.estimated += int(bool(rec.get("tokens_estimated")))
        self.cost_n += to_nanos(rec["cost_usd"])
        self.baseline_n += to_nanos(rec["baseline_cost_usd"])

    def add_job(self, rec: dict[str, Any], latency_s: float) -> None:
        self.jobs += 1
        self.fallback_jobs += int(bool(rec.get("job_fallback")))
        self.escalated_jobs += int(bool(rec.get("job_escalated")))
        self.cache_hits += int(bool(rec.get("cache_hit") or rec["outcome"] == "cached"))
        self.latencies.append(latency_s)

    def percentiles(self) -> tuple[float | None, float | None, float | None]:
        if not self.latencies:
            return None, None, None
        p = np.percentile(np.asarray(self.latencies), [50, 95, 99])
        return float(p[0]), float(p[1]), float(p[2])

    def rate(self, n: int) -> float | None:
        return n / self.jobs if self.jobs else None

    def figures(self) -> dict[str, Any]:
        spend, baseline = from_nanos(self.cost_n), from_nanos(self.baseline_n)
        p50, p95, p99 = self.percentiles()
        return {
            "jobs": self.jobs,
            "attempts": self.attempts,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "spend_usd": spend,
            "baseline_usd": baseline,
            "savings_usd": from_nanos(self.baseline_n - self.cost_n),
            "savings_fraction": (baseline - spend) / baseline if self.baseline_n else None,
            "cost_per_job_usd": spend / self.jobs if self.jobs else None,
            "latency_p50_s": p50,
            "latency_p95_s": p95,
            "latency_p99_s": p99,
            "fallback_rate": self.rate(self.fallback_jobs),
            "escalation_rate": self.rate(self.escalated_jobs),
            "cache_hit_rate": self.rate(self.cache_hits),
            "estimated_tokens_share": self.estimated / self.attempts if self.attempts else None,
        }


def _group_value(rec: dict[str, Any], by: str) -> str:
    return str(rec.get(by) or "-")


def build_report(
    records: Sequence[dict[str, Any]],
    *,
    config: FleetConfig,
    since: str = "30d",
    by: GroupBy = "workflow",
    start: float,
    end: float,
) -> Report:
    """Compute a report from ledger record dicts (as :meth:`Ledger.raw_between` returns)."""
    if by not in ("workflow", "tier", "model", "kind"):
        raise ValueError(f"by must be workflow, tier, model or kind, got {by!r}")
    total = _Acc()
    groups: dict[str, _Acc] = defaultdict(_Acc)
    job_latency: dict[str, float] = defaultdict(float)
    for rec in records:
        job_latency[rec["job_id"]] += float(rec["latency_s"])
    tier_jobs: dict[str, int] = defaultdict(int)
    for rec in records:
        key = _group_value(rec, by)
        total.add_attempt(rec)
        groups[key].add_attempt(rec)
        if is_job_final(rec):
            latency = job_latency[rec["job_id"]]
            total.add_job(rec, latency)
            groups[key].add_job(rec, latency)
            tier_jobs[rec["tier"]] += 1

    rows = []
    for key, acc in sorted(groups.items(), key=lambda kv: (-kv[1].cost_n, kv[0])):
        rows.append(
            Row(
                key=key,
                job_share=acc.jobs / total.jobs if total.jobs else 0.0,
                spend_share=acc.cost_n / total.cost_n if total.cost_n else 0.0,
                **acc.figures(),
            )
        )

    first_ts = min((float(r["ts"]) for r in records), default=start)
    observed_days = max(1.0, (end - max(start, first_ts)) / 86400)
    figures = total.figures()
    per_month = DAYS_PER_MONTH / observed_days
    return Report(
        since=since,
        by=by,
        start=start,
        end=end,
        baseline_model=config.baseline_model(),
        baseline_basis=_basis(config),
        warnings=[f"local compute priced at $0 on tier {t}: set cost_per_hour (or "
                  f"cost_per_second) on its hosts" for t in config.unpriced_compute()],
        tier_share={t: n / total.jobs for t, n in sorted(tier_jobs.items())},
        simulated_attempts=sum(1 for r in records if r.get("simulated")),
        observed_days=observed_days,
        monthly_spend_usd=figures["spend_usd"] * per_month,
        monthly_baseline_usd=figures["baseline_usd"] * per_month,
        monthly_savings_usd=figures["savings_usd"] * per_month,
        rows=rows,
        thresholds=Thresholds(
            alert_cost_increase=config.ledger.alert_cost_increase,
            max_fallback_rate=config.ledger.max_fallback_rate,
            max_escalation_rate=config.ledger.max_escalation_rate,
        ),
        **figures,
    )


def _basis(config: FleetConfig) -> str:
    model = config.baseline_model()
    if model is None:
        return "no paid model priced: no baseline"
    how = ("ledger.baseline_model" if config.ledger.baseline_model
           else "the paid tier's own model")
    return (f"every job on {model} ({how}), priced at its input/output rates for the "
            "tokens each job used, once per job")


def report(
    since: str = "30d",
    by: GroupBy = "workflow",
    *,
    config: FleetConfig | None = None,
    redis: redis_lib.Redis | None = None,
    end: float | None = None,
    sql_url: str | None = None,
) -> Report:
    """The report for the ``since`` period ending at ``end`` (default now); from the SQL
    ledger at ``sql_url`` (default ``ledger.url``; ``""`` reads Redis) — the same records,
    so the same figures."""
    config = config or get_config()
    end = time.time() if end is None else end
    start = end - parse_since(since)
    sql_url = config.ledger.url if sql_url is None else sql_url
    if sql_url:
        from ..ledger_sql import SqlLedger  # SQLAlchemy only for SQL reads

        records = SqlLedger(sql_url).raw_between(start, end)
    elif redis is not None:
        records = Ledger(redis, config).raw_between(start, end)
    else:
        with redis_lib.Redis.from_url(config.redis_url) as client:
            records = Ledger(client, config).raw_between(start, end)
    return build_report(records, config=config, since=since, by=by, start=start, end=end)


def previous_report(
    current: Report, *, config: FleetConfig | None = None, redis: redis_lib.Redis | None = None,
    sql_url: str | None = None,
) -> Report:
    """The period of the same length just before ``current``, for :func:`check`."""
    return report(current.since, current.by, config=config, redis=redis, end=current.start,
                  sql_url=sql_url)


def route_check(
    current: Report, *, config: FleetConfig | None = None, redis: redis_lib.Redis | None = None,
    sql_url: str | None = None, by: str = "model",
) -> PeriodRoutes:
    """Per route (the routed model, or ``by="policy_version"``): quality from the labels,
    fallback and escalation rates and cost per request over ``current``'s period and the
    one before, with the alerts (cost per request up more than ``ledger.alert_cost_increase``,
    small-routed quality down more than ``learning.tolerance``). Records come from where
    ``current``'s did (``sql_url``, else Redis); labels live in Redis only."""
    config = config or get_config()
    client = redis if redis is not None else redis_lib.Redis.from_url(config.redis_url)
    try:
        return period_routes(config, ledger_records(config, client, sql_url),
                             LabelStore(client, config).since,
                             end=current.end, seconds=current.end - current.start, by=by)
    finally:
        if redis is None:
            client.close()


def check(current: Report, previous: Report | None = None) -> list[Alert]:
    """The alerts: cost per job up on the previous period, too many fallbacks or escalations."""
    t = current.thresholds
    alerts: list[Alert] = []
    now_cpj, before_cpj = current.cost_per_job_usd, previous.cost_per_job_usd if previous else None
    if now_cpj is not None and before_cpj is not None:
        if before_cpj > 0:
            increase = now_cpj / before_cpj - 1
            if increase > t.alert_cost_increase:
                alerts.append(
                    Alert(
                        name="cost_per_job",
                        value=increase,
                        threshold=t.alert_cost_increase,
                        reason=(
                            f"cost per job rose {increase:.0%} (${before_cpj:.6f} -> "
                            f"${now_cpj:.6f}) on the previous {current.since}, above the "
                            f"{t.alert_cost_increase:.0%} bound: more jobs go to expensive tiers"
                        ),
                    )
                )
        elif now_cpj > 0:
            # From free to paying is an unbounded increase.
            alerts.append(
                Alert(
                    name="cost_per_job",
                    value=float("inf"),
                    threshold=t.alert_cost_increase,
                    reason=(
                        f"cost per job rose from $0 to ${now_cpj:.6f} on the previous "
                        f"{current.since}: jobs that ran free now pay"
                    ),
                )
            )
    # (name, value, bound, what it means): one rule for every rate with a ceiling.
    rates = [
        ("fallback_rate", current.fallback_rate, t.max_fallback_rate,
         "of jobs fell back to another tier", "a host is down or overloaded"),
        ("escalation_rate", current.escalation_rate, t.max_escalation_rate,
         "of jobs were escalated after a poor answer", "cheap tiers get work they cannot do"),
    ]
    for name, value, bound, what, why in rates:
        if value is not None and value > bound:
            alerts.append(Alert(name=name, value=value, threshold=bound,
                                reason=f"{value:.1%} {what} (bound {bound:.1%}): {why}"))
    return alerts


def plot_report(rep: Report, path: str | Path) -> Path:
    """Spend per group, routed against the baseline model, as a PNG."""
    rows = sorted(rep.rows, key=lambda r: -max(r.baseline_usd, r.spend_usd))
    saving = f"{rep.savings_fraction:.0%}" if rep.savings_fraction is not None else "n/a"
    sim = f"; {rep.simulated_attempts} attempts on simulated hosts" if rep.simulated_attempts else ""
    return plot_bars(
        path,
        [r.key for r in rows],
        [
            ("routed (what was spent)", [r.spend_usd for r in rows], "#2a7ab0"),
            (
                f"baseline (all on {rep.baseline_model or 'n/a'})",
                [r.baseline_usd for r in rows],
                "#c8553d",
            ),
        ],
        title=f"Spend by {rep.by}, routed vs baseline, last {rep.since}",
        xlabel=f"USD spent over the last {rep.since}",
        subtitle=(
            f"{rep.jobs} jobs, spent {usd(rep.spend_usd)} vs {usd(rep.baseline_usd)} baseline "
            f"(saved {saving}); monthly projection {usd(rep.monthly_spend_usd)}{sim}"
        ),
    )
