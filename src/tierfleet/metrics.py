"""Prometheus metrics for the whole fleet, kept in Redis and exposed by a custom collector.

Workers are prefork processes on many machines: an in-process
``prometheus_client.Counter`` would give one series per pool child, reset on
every restart and need a scrape target per machine. Instead each finished
attempt adds to a few Redis hashes (one pipelined round trip), and whoever
serves ``/metrics`` (the API, or ``tierfleet metrics`` standalone) reads them
back at scrape time and adds the live gauges (queue depths, heartbeats,
breakers, parked and dead-letter counts). Any number of scrape targets show the
same fleet-wide numbers.

Redis layout (``P`` = ``config.key_prefix``; counters never expire, as
Prometheus counters must only grow):

- ``P:metrics:jobs``     field ``[tier, kind, outcome]``      -> attempts
  (``tierfleet_attempts_total``: a job that falls back counts once per tier tried)
- ``P:metrics:final``    field ``[workflow, kind, tier, outcome]`` -> jobs
  (``tierfleet_jobs_total``: the final attempt of each job, ok / failed / cached;
  dead jobs are ``tierfleet_dead_letters``)
- ``P:metrics:tokens``   field ``[tier, model, direction]``   -> tokens
- ``P:metrics:cost``     field ``[tier, model]``              -> USD (float)
- ``P:metrics:wfcost``   field ``[workflow, tier]``           -> USD (float)
- ``P:metrics:latency``  field ``[tier, le]`` (per bucket, not cumulative),
  ``[tier, "sum"]``, ``[tier, "count"]``; buckets reach the task time limit

Route quality (``tierfleet_route_*{by, route}``, ``by`` = ``model`` or
``policy_version``): per routed model and per policy version over the last
``ledger.route_window_s``, from the ledger and the labels, with the alerts of
``tierfleet report --check`` against the window before (``tierfleet_route_alert``,
1 when firing). Computed by :func:`tierfleet.routequality.period_routes`, cached a
minute (each computation reads two windows of records); at most ``MAX_ROUTES``
routes per ``by``, so a label never takes a job id, a prompt or an unbounded value.

Worker numbers (nodes, processes, busy nodes) are defined once in
:mod:`tierfleet.fleetnumbers`, as ``tierfleet status`` shows them. This collector is
the one exporter of fleet-wide series (``tierfleet metrics``); see the README.

Fields are JSON lists, so a model name with ``|`` or ``:`` in it stays one label.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import keys
from .config import FleetConfig
from .fleetnumbers import tier_workers
from .health import Breaker
from .heartbeats import live_workers
from .jobs import Attempt
from .store import Parking

if TYPE_CHECKING:
    from .routequality import PeriodRoutes

__all__ = [
    "BREAKER_CODES",
    "LATENCY_BUCKETS",
    "FleetCollector",
    "fleet_registry",
    "latency_buckets",
    "record_attempt",
    "serve",
]

log = logging.getLogger("tierfleet.metrics")

# Rules jobs finish in milliseconds, paid reasoning calls in minutes: one set for every
# tier, so the histograms of different tiers can be compared. ``latency_buckets`` adds
# the long end up to the task time limit, so no attempt that may run lands in +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 900.0,
)
# Attempts that end a job (a fallback or an escalation hands it on).
_FINAL = frozenset({"ok", "failed", "cached"})


def latency_buckets(config: FleetConfig | None = None) -> tuple[float, ...]:
    """The histogram's upper bounds: the fixed set, then the task time limit when larger."""
    limit = float(config.reliability.task_time_limit_s) if config is not None else 0.0
    extra = (limit,) if limit > LATENCY_BUCKETS[-1] else ()
    return (*LATENCY_BUCKETS, *extra)
BREAKER_CODES = {"closed": 0, "half-open": 1, "open": 2}
ROUTE_BY = ("model", "policy_version")
ROUTE_ALERTS = ("cost_per_request", "small_quality")
MAX_ROUTES = 64  # per ``by``: the busiest; bounds the series a scrape can grow to
ROUTE_REFRESH_S = 60.0
# Fallback attempts never reached a model, and cache hits did not run one:
# their latency would drag the tier's histogram towards zero.
_NO_LATENCY = frozenset({"fallback", "cached"})
SERVICE_TIME_ALPHA = 0.3  # weight of the newest attempt in the moving mean (~the last 5 count)
# Inside the ledger's MULTI: a script, because the new mean needs the old one. EVAL (not
# EVALSHA): redis-py would check a registered script with one more round trip per job.
_EWMA = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local x = tonumber(ARGV[2])
if old then x = old + tonumber(ARGV[3]) * (x - old) end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.6f', x))
return 0
"""


def _k(config: FleetConfig, name: str) -> str:
    return keys.metrics(config, name)


def _field(*parts: str) -> str:
    return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)


def _bucket_label(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(float(le))


def _bucket_of(seconds: float, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> str:
    i = bisect.bisect_left(buckets, seconds)
    return _bucket_label(buckets[i] if i < len(buckets) else math.inf)


def record_attempt(client: redis.Redis, config: FleetConfig, attempt: Attempt) -> None:
    """Add one finished attempt to the fleet-wide counters (one pipelined round trip).

    Not idempotent by itself: call it only when :meth:`Ledger.record` returned
    True, so a redelivered job is counted once, like it is billed once. Never
    raises on a Redis error (it logs a warning): a metrics hiccup must not fail a job.
    """
    try:
        _record(client, config, attempt)
    except redis.RedisError as exc:
        log.warning("metrics: could not record attempt %s/%s: %s", attempt.job_id,
                    attempt.attempt, exc)


def _record(client: redis.Redis, config: FleetConfig, attempt: Attempt) -> None:
    pipe = client.pipeline(transaction=False)
    add_attempt(pipe, config, attempt)
    pipe.execute()


def add_attempt(pipe: Any, config: FleetConfig, attempt: Attempt) -> None:
    """Queue the counter updates of one attempt on ``pipe`` (the ledger's transaction uses
    this, so an attempt is counted exactly when it is billed, in the same round trip)."""
    pipe.hincrby(_k(config, "jobs"), _field(attempt.tier, attempt.kind, attempt.outcome), 1)
    if attempt.outcome in _FINAL:
        pipe.hincrby(_k(config, "final"), _field(attempt.workflow, attempt.kind, attempt.tier,
                                                 attempt.outcome), 1)
    if attempt.model and attempt.outcome != "cached":
        # Tokens and money are what a model actually spent; rules jobs and cache hits spend none.
        if attempt.tokens_in:
            pipe.hincrby(_k(config, "tokens"), _field(attempt.tier, attempt.model, "in"),
                         attempt.tokens_in)
        if attempt.tokens_out:
            pipe.hincrby(_k(config, "tokens"), _field(attempt.tier, attempt.model, "out"),
                         attempt.tokens_out)
        if attempt.cost_usd:
            pipe.hincrbyfloat(_k(config, "cost"), _field(attempt.tier, attempt.model),
                              attempt.cost_usd)
            pipe.hincrbyfloat(_k(config, "wfcost"), _field(attempt.workflow, attempt.tier),
                              attempt.cost_usd)
    ran = attempt.outcome not in _NO_LATENCY and not (
        attempt.outcome == "failed" and attempt.latency_s <= 0
    )
    if ran:
        lat = _k(config, "latency")
        seconds = max(attempt.latency_s, 0.0)
        pipe.hincrby(lat, _field(attempt.tier, _bucket_of(seconds, latency_buckets(config))), 1)
        pipe.hincrbyfloat(lat, _field(attempt.tier, "sum"), seconds)
        pipe.hincrby(lat, _field(attempt.tier, "count"), 1)
        # The dispatcher's load stage reads this (P:svc): a moving mean per tier, so a
        # queue's wait is estimated from how long its jobs take now, not all-time.
        pipe.eval(_EWMA, 1, keys.service_times(config), attempt.tier, repr(seconds),
                  SERVICE_TIME_ALPHA)


def _parse(raw: dict[str, str]) -> Iterator[tuple[list[str], str]]:
    for f, v in raw.items():
        try:
            labels = json.loads(f)
        except ValueError:
            continue  # a field written by hand: not ours to report
        if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
            yield labels, v


class FleetCollector(Collector):
    """Reads the fleet's counters and live state from Redis at each scrape.

    When Redis cannot be reached the scrape still answers, with
    ``tierfleet_redis_up 0`` and no other fleet series, so an alert can fire on it.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.config = config
        self.breaker = Breaker(client, config)
        self.parking = Parking(client, config)
        self.clock = clock
        self._records: Any = None  # the ledger reader, made at the first scrape
        self._routes: tuple[float, list[PeriodRoutes]] | None = None
        self._routes_lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._families()
        except redis.RedisError as exc:
            log.warning("metrics: redis unavailable: %s", exc)
            families = []
            up = 0.0
        else:
            up = 1.0
        yield GaugeMetricFamily("tierfleet_redis_up",
                                "1 when the fleet's Redis answered this scrape", value=up)
        yield from families

    def _families(self) -> list[Metric]:
        cfg = self.config
        tiers = list(cfg.tiers)
        pipe = self.redis.pipeline(transaction=False)
        for name in ("jobs", "final", "tokens", "cost", "wfcost", "latency"):
            pipe.hgetall(_k(cfg, name))
        for t in tiers:
            pipe.llen(t)
        pipe.hlen(keys.UNACKED)
        attempts_raw, final_raw, tokens_raw, cost_raw, wfcost_raw, lat_raw, *rest = pipe.execute()
        depths, unacked = rest[: len(tiers)], rest[len(tiers)]

        attempts = CounterMetricFamily(
            "tierfleet_attempts", "Job attempts by tier, kind and outcome "
            "(a job that falls back or escalates counts once per tier it tried)",
            labels=["tier", "kind", "outcome"])
        for labels, v in _parse(attempts_raw):
            if len(labels) == 3:
                attempts.add_metric(labels, float(v))
        jobs = CounterMetricFamily(
            "tierfleet_jobs", "Jobs finished, by workflow, kind, the tier of their final "
            "attempt and its outcome (ok, failed, cached); dead jobs: tierfleet_dead_letters",
            labels=["workflow", "kind", "tier", "outcome"])
        for labels, v in _parse(final_raw):
            if len(labels) == 4:
                jobs.add_metric(labels, float(v))

        toks = CounterMetricFamily("tierfleet_tokens", "Model tokens by tier, model and direction",
                                   labels=["tier", "model", "direction"])
        for labels, v in _parse(tokens_raw):
            if len(labels) == 3:
                toks.add_metric(labels, float(v))

        cost = CounterMetricFamily("tierfleet_cost_usd", "Spend in USD by tier and model",
                                   labels=["tier", "model"])
        for labels, v in _parse(cost_raw):
            if len(labels) == 2:
                cost.add_metric(labels, float(v))
        wfcost = CounterMetricFamily("tierfleet_workflow_cost_usd",
                                     "Spend in USD by workflow and tier", labels=["workflow", "tier"])
        for labels, v in _parse(wfcost_raw):
            if len(labels) == 2:
                wfcost.add_metric(labels, float(v))

        latency = HistogramMetricFamily(
            "tierfleet_job_latency_seconds",
            "Time a tier took to run an attempt (fallbacks and cache hits excluded)",
            labels=["tier"])
        per_tier: dict[str, dict[str, float]] = defaultdict(dict)
        for labels, v in _parse(lat_raw):
            if len(labels) == 2:
                per_tier[labels[0]][labels[1]] = float(v)
        for tier in sorted(per_tier):
            counts = per_tier[tier]
            running = 0.0
            buckets: list[tuple[str, float]] = []
            for le in (*latency_buckets(cfg), math.inf):
                running += counts.get(_bucket_label(le), 0.0)
                buckets.append((_bucket_label(le), running))
            latency.add_metric([tier], buckets, counts.get("sum", 0.0))

        depth = GaugeMetricFamily("tierfleet_queue_depth", "Messages waiting on each tier's queue",
                                  labels=["tier"])
        for t, d in zip(tiers, depths, strict=True):
            depth.add_metric([t], float(d))

        per_tier = tier_workers(live_workers(self.redis, cfg), tiers)
        workers = GaugeMetricFamily("tierfleet_workers_live",
                                    "Worker nodes with a fresh heartbeat, by tier they consume",
                                    labels=["tier"])
        processes = GaugeMetricFamily("tierfleet_worker_processes",
                                      "Pool processes of the live nodes, by tier (jobs that "
                                      "can run at once)", labels=["tier"])
        busy = GaugeMetricFamily("tierfleet_workers_busy",
                                 "Live nodes holding at least one delivery, by tier",
                                 labels=["tier"])
        for t, n in per_tier.items():
            workers.add_metric([t], float(n["nodes"]))
            processes.add_metric([t], float(n["processes"]))
            busy.add_metric([t], float(n["busy_nodes"]))

        breakers = GaugeMetricFamily("tierfleet_breaker_state",
                                     "Circuit breaker per host: 0 closed, 1 half-open, 2 open",
                                     labels=["host"])
        for v in self.breaker.views():
            breakers.add_metric([v.host], float(BREAKER_CODES[v.state]))

        parked = GaugeMetricFamily("tierfleet_parked_jobs",
                                   "Jobs waiting for an allowed tier to come back",
                                   value=float(self.parking.count()))
        dead = GaugeMetricFamily("tierfleet_dead_letters",
                                 "Jobs given up on after every retry (tierfleet dlq)",
                                 value=float(self.parking.dead_count()))
        in_flight = GaugeMetricFamily("tierfleet_in_flight",
                                      "Messages delivered to workers and not yet acknowledged",
                                      value=float(unacked))
        return [jobs, attempts, latency, toks, cost, wfcost, depth, workers, processes, busy,
                breakers, parked, dead, in_flight, *self._budget_families(),
                *self._route_families()]

    def routes(self) -> list[PeriodRoutes]:
        """Route stats by model and by policy version, recomputed at most once a minute."""
        # Labels import the policy: lazily, so a worker recording attempts stays light.
        from .labels import LabelStore
        from .routequality import ledger_records, period_routes

        now = self.clock()
        with self._routes_lock:
            if self._routes is not None and now - self._routes[0] < ROUTE_REFRESH_S:
                return self._routes[1]
            if self._records is None:
                self._records = ledger_records(self.config, self.redis)
            read: dict[tuple[float, float], list[Any]] = {}

            def records(a: float, b: float) -> list[Any]:
                # Both groupings read the same two windows: read each once.
                if (a, b) not in read:
                    read[a, b] = list(self._records(a, b))
                return read[a, b]

            labels = LabelStore(self.redis, self.config).since
            out = [period_routes(self.config, records, labels, end=now,
                                 seconds=self.config.ledger.route_window_s, by=by)
                   for by in ROUTE_BY]
            self._routes = (now, out)
            return out

    def _route_families(self) -> list[Metric]:
        win = self.config.ledger.route_window_s
        fams = {
            "requests": GaugeMetricFamily(
                "tierfleet_route_requests", f"Jobs per route over the last {win:.0f}s "
                "(route: the routed model, or the policy version that chose it)",
                labels=["by", "route"]),
            "quality": GaugeMetricFamily(
                "tierfleet_route_quality", "Mean judged quality (0..1) of a route's labelled "
                "answers (feedback, escalations, shadow tests)", labels=["by", "route"]),
            "small_quality": GaugeMetricFamily(
                "tierfleet_route_small_quality", "Mean judged quality (0..1) of a route's "
                "answers from tiers below the strong one", labels=["by", "route"]),
            "fallback_rate": GaugeMetricFamily(
                "tierfleet_route_fallback_rate", "Share of a route's jobs that fell back",
                labels=["by", "route"]),
            "escalation_rate": GaugeMetricFamily(
                "tierfleet_route_escalation_rate", "Share of a route's jobs escalated after "
                "a poor answer", labels=["by", "route"]),
            "cost_per_request": GaugeMetricFamily(
                "tierfleet_route_cost_per_request_usd", "A route's spend per job (USD)",
                labels=["by", "route"]),
        }
        alert = GaugeMetricFamily(
            "tierfleet_route_alert", "1 when a route alert fires against the window before "
            "(cost per request up more than ledger.alert_cost_increase, small-routed quality "
            "down more than learning.tolerance), else 0", labels=["by", "route", "alert"])
        try:
            periods = self.routes()
        except Exception as exc:  # a SQL ledger that is down must not lose the other series
            log.warning("metrics: route stats unavailable: %s", exc)
            return []
        for pr in periods:
            firing = {(a.route, a.name) for a in pr.alerts}
            busiest = sorted(pr.now.values(), key=lambda s: (-s.requests, s.key))[:MAX_ROUTES]
            for s in busiest:
                labels = [pr.by, s.key]
                for name, value in (("requests", float(s.requests)), ("quality", s.quality),
                                    ("small_quality", s.small_quality),
                                    ("fallback_rate", s.fallback_rate),
                                    ("escalation_rate", s.escalation_rate),
                                    ("cost_per_request", s.cost_per_request)):
                    if value is not None:  # no labels (or no jobs): no number, not a 0
                        fams[name].add_metric(labels, value)
                for name in ROUTE_ALERTS:
                    alert.add_metric([*labels, name], float((s.key, name) in firing))
        return [*fams.values(), alert]

    def _budget_families(self) -> list[Metric]:
        from .budgets import BudgetBook  # budgets import the policy; metrics stay light otherwise

        spent = GaugeMetricFamily("tierfleet_budget_spent_usd",
                                  "Spend in each budget's current period", labels=["budget", "period"])
        limit = GaugeMetricFamily("tierfleet_budget_limit_usd", "Each budget's limit per period",
                                  labels=["budget", "period"])
        used = GaugeMetricFamily("tierfleet_budget_used_ratio",
                                 "Spent / limit; alert at the budget's thresholds (0.8, 1.0)",
                                 labels=["budget", "period"])
        for s in BudgetBook(self.redis, self.config).status():
            spent.add_metric([s.name, s.period], s.spent_usd)
            limit.add_metric([s.name, s.period], s.limit_usd)
            used.add_metric([s.name, s.period], s.used)
        return [spent, limit, used]


def fleet_registry(client: redis.Redis, config: FleetConfig) -> CollectorRegistry:
    """A registry holding only the fleet collector (no process metrics of whoever serves it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(client, config))
    return registry


def serve(config: FleetConfig, port: int = 9808, addr: str = "127.0.0.1",
          client: redis.Redis | None = None) -> tuple[Any, threading.Thread]:
    """Serve the fleet metrics on ``http://addr:port/metrics`` from a background thread.

    Returns prometheus_client's (server, thread); ``server.shutdown()`` stops it.
    """
    from prometheus_client import start_http_server

    from .broker import redis_client

    registry = fleet_registry(client or redis_client(config), config)
    return start_http_server(port, addr=addr, registry=registry)
