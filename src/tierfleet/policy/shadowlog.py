"""What a candidate policy would have done: its decisions on live traffic, not acted on.

Why: an offline evaluation judges a candidate on labelled prompts, which are not the
traffic it will route. In a rollout's ``shadow`` phase (before its first share) the
dispatcher routes every job with the current policy, asks the candidate too, and
logs both decisions here (:class:`ShadowLog`): which tier and model each picked,
their ``p_small_ok`` and the estimated cost of each (:func:`estimate`: token
prices or rented time as ``FleetView.cost`` prices them, and our own hardware at
its hosts' ``cost_per_hour``, as the ledger bills it, so the counterfactual and the
live cost alert count the same money). :meth:`ShadowLog.summary` is the
counterfactual: how often they agree, how many jobs the candidate would send to a
cheaper or a pricier tier, and the cost per request each implies, which
:meth:`Rollout.shadow_guard` holds to ``ledger.alert_cost_increase``.

Bounded: one Redis list per candidate (``P:policy:shadow:{version}``), trimmed to
``learning.shadow_log_size`` entries and expiring ``learning.shadow_log_ttl_s`` after
the last write. An entry holds ids, tiers, models and numbers: never the prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import redis
from pydantic import BaseModel

from .. import keys
from ..config import FleetConfig
from ..fleet import DEFAULT_OUT_TOKENS, RENTED_PREFILL_TOKENS_PER_S, RENTED_TOKENS_PER_S, FleetView
from ..jobs import Job, Route

__all__ = ["ShadowEntry", "ShadowLog", "ShadowSummary", "entry_of", "estimate"]


class ShadowEntry(BaseModel):
    """One job's two decisions: the one acted on (current) and the candidate's."""

    job_id: str
    ts: float
    current: str  # policy versions
    candidate: str
    kind: str
    tokens_in: int = 0
    tier: str
    model: str | None = None
    p_small_ok: float | None = None
    cost_usd: float = 0.0  # estimated, as routed
    cand_tier: str
    cand_model: str | None = None
    cand_p_small_ok: float | None = None
    cand_cost_usd: float = 0.0  # estimated, had the candidate routed it

    @property
    def agrees(self) -> bool:
        return (self.tier, self.model) == (self.cand_tier, self.cand_model)


class ShadowSummary(BaseModel):
    """The counterfactual over a candidate's logged decisions."""

    candidate: str
    current: str | None = None
    decisions: int = 0
    agree: int = 0
    cheaper_tier: int = 0  # the candidate would send the job lower on the ladder
    pricier_tier: int = 0
    cost_usd: float = 0.0  # estimated spend of the logged jobs as routed
    cand_cost_usd: float = 0.0  # and had the candidate routed them
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def agreement_rate(self) -> float | None:
        return self.agree / self.decisions if self.decisions else None

    @property
    def cost_per_request(self) -> float | None:
        return self.cost_usd / self.decisions if self.decisions else None

    @property
    def cand_cost_per_request(self) -> float | None:
        return self.cand_cost_usd / self.decisions if self.decisions else None

    @property
    def cost_change(self) -> float | None:
        """Relative change of the estimated cost per request (0.25: the candidate +25%)."""
        if not self.decisions:
            return None
        if self.cost_usd > 0:
            return self.cand_cost_usd / self.cost_usd - 1
        return float("inf") if self.cand_cost_usd > 0 else 0.0

    def shown(self) -> dict[str, Any]:
        return {**self.model_dump(), "agreement_rate": self.agreement_rate,
                "cost_per_request": self.cost_per_request,
                "cand_cost_per_request": self.cand_cost_per_request,
                "cost_change": self.cost_change}


def estimate(config: FleetConfig, tier: str, model: str | None, tokens_in: int,
             tokens_out: int) -> float:
    """Estimated US$ of one attempt at ``tier``: ``FleetView.cost``, with a local tier's
    time priced at its hosts' ``cost_per_hour`` (at the rented throughput assumption)."""
    fleet = FleetView.of(config)
    place = fleet.place.get(tier)
    if place is None:
        return 0.0
    if place == "local":
        rate = max((config.hosts[h.name].cost_per_hour for h in fleet.hosts(tier, model)),
                   default=0.0)
        seconds = tokens_out / RENTED_TOKENS_PER_S + tokens_in / RENTED_PREFILL_TOKENS_PER_S
        return rate * seconds / 3600.0
    return fleet.cost(tier, model, tokens_in, tokens_out)


def entry_of(config: FleetConfig, job: Job, current: Route, candidate: Route,
             now: float | None = None) -> ShadowEntry:
    """The log entry of one job's two routes (nothing of the job's text is kept)."""
    out = job.max_tokens or DEFAULT_OUT_TOKENS

    def cost(r: Route) -> float:
        return estimate(config, r.tier, r.model, r.tokens_in, out)

    return ShadowEntry(
        job_id=job.id, ts=time.time() if now is None else now,
        current=current.policy_version or "-", candidate=candidate.policy_version or "-",
        kind=current.kind.value, tokens_in=current.tokens_in, tier=current.tier,
        model=current.model, p_small_ok=current.p_small_ok, cost_usd=cost(current),
        cand_tier=candidate.tier, cand_model=candidate.model,
        cand_p_small_ok=candidate.p_small_ok, cand_cost_usd=cost(candidate))


class ShadowLog:
    """Each candidate's logged decisions in Redis: a capped, expiring list per version."""

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.size = config.learning.shadow_log_size
        self.ttl_s = int(config.learning.shadow_log_ttl_s)

    def key(self, version: str) -> str:
        return keys.policy_shadow_log(self.config, version)

    def add(self, entries: Sequence[ShadowEntry]) -> None:
        """Append (one round trip), keep the newest ``shadow_log_size``, renew the expiry."""
        by_version: dict[str, list[str]] = {}
        for e in entries:
            by_version.setdefault(e.candidate, []).append(e.model_dump_json())
        if not by_version:
            return
        pipe = self.redis.pipeline(transaction=False)
        for version, lines in by_version.items():
            k = self.key(version)
            pipe.rpush(k, *lines)
            pipe.ltrim(k, -self.size, -1)
            pipe.expire(k, self.ttl_s)
        pipe.execute()

    def entries(self, version: str) -> list[ShadowEntry]:
        return [ShadowEntry.model_validate(json.loads(x))
                for x in self.redis.lrange(self.key(version), 0, -1)]

    def clear(self, version: str) -> None:
        self.redis.delete(self.key(version))

    def summary(self, version: str) -> ShadowSummary:
        rank = FleetView.of(self.config).rank
        s = ShadowSummary(candidate=version)
        for e in self.entries(version):
            s.current = e.current
            s.decisions += 1
            s.agree += int(e.agrees)
            here, there = rank.get(e.tier, -1), rank.get(e.cand_tier, -1)
            s.cheaper_tier += int(there < here)
            s.pricier_tier += int(there > here)
            s.cost_usd += e.cost_usd
            s.cand_cost_usd += e.cand_cost_usd
            s.first_ts = e.ts if s.first_ts is None else min(s.first_ts, e.ts)
            s.last_ts = e.ts if s.last_ts is None else max(s.last_ts, e.ts)
        return s
