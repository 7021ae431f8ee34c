"""The exporter's per-route gauges: quality, small-routed quality, fallback and escalation
rates, cost per request and the alerts, by routed model and by policy version; bounded
labels, and no prompt or answer word in any series."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tierfleet.config import FleetConfig
from tierfleet.jobs import Attempt
from tierfleet.labels import Label, LabelStore
from tierfleet.ledger import Ledger
from tierfleet.metrics import FleetCollector, fleet_registry

SECRET = "zanzibar-merger-codeword"
DAY = 86_400.0


def job(i: str, ts: float, **kw: Any) -> Attempt:
    base: dict[str, Any] = {"job_id": i, "attempt": 1, "workflow": "inbox", "kind": "summary",
                            "tier": "paid", "model": "gpt-5.5", "tokens_in": 100, "tokens_out": 10,
                            "latency_s": 0.5, "ts": ts, "policy_version": "v0001"}
    return Attempt(**{**base, **kw})


def label(i: str, ts: float, score: float) -> Label:
    return Label(id=f"feedback:{i}", source="feedback", job_id=i, ts=ts, kind="summary",
                 tier="local-mac", model="qwen3:4b", routed_small=True, small_score=score,
                 judge="producer", judge_version="1", policy_version="v0001",
                 prompt=f"summarise the {SECRET} memo", note=f"{SECRET} answer was wrong")


@pytest.fixture
def fleet(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> tuple[FleetConfig, Any, float]:
    now = time.time()
    ledger = Ledger(fake_redis, core_config, write_jsonl=False)
    store = LabelStore(fake_redis, core_config)
    for i in range(4):  # yesterday's window: $0.01 a request; today's: $0.0125 (+25%)
        ledger.record(job(f"old{i}", now - 1.5 * DAY + i, cost_usd=0.01))
        ledger.record(job(f"new{i}", now - 3600 + i, cost_usd=0.0125))
    # One of today's small jobs fell back to paid, one escalated.
    ledger.record(job("fell", now - 3000, tier="local-mac", model="qwen3:4b", outcome="fallback"))
    ledger.record(job("fell", now - 2999, attempt=2, tier="local-mac", model="qwen3:4b",
                      fallbacks=1, cost_usd=0.0))
    ledger.record(job("up", now - 2900, tier="local-mac", model="qwen3:4b", outcome="escalated"))
    ledger.record(job("up", now - 2899, attempt=2, tier="local-mac", model="qwen3:4b", cost_usd=0.0))
    ledger.record(job("sh.new0", now - 2800, cost_usd=9.0))  # a shadow test: not a route's cost
    for i in range(100):  # small-routed quality 1.0 yesterday, 0.9 today
        store.add(label(f"o{i}", now - 1.5 * DAY + i, 1.0))
        store.add(label(f"n{i}", now - 3600 + i, 0.0 if i < 10 else 1.0))
    return core_config, fake_redis, now


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_route_gauges_by_model_and_by_policy_version(fleet: tuple[FleetConfig, Any, float]) -> None:
    cfg, r, _ = fleet
    text = generate_latest(fleet_registry(r, cfg)).decode()
    got = samples(text)

    def g(name: str, by: str, route: str, **extra: str) -> float | None:
        return got.get((name, tuple(sorted({"by": by, "route": route, **extra}.items()))))

    assert g("tierfleet_route_requests", "model", "gpt-5.5") == 4
    assert g("tierfleet_route_cost_per_request_usd", "model", "gpt-5.5") == pytest.approx(0.0125)
    assert g("tierfleet_route_requests", "model", "qwen3:4b") == 2
    assert g("tierfleet_route_fallback_rate", "model", "qwen3:4b") == pytest.approx(0.5)
    assert g("tierfleet_route_escalation_rate", "model", "qwen3:4b") == pytest.approx(0.5)
    assert g("tierfleet_route_small_quality", "model", "qwen3:4b") == pytest.approx(0.9)
    assert g("tierfleet_route_quality", "model", "qwen3:4b") == pytest.approx(0.9)
    assert g("tierfleet_route_alert", "model", "gpt-5.5", alert="cost_per_request") == 1
    assert g("tierfleet_route_alert", "model", "qwen3:4b", alert="small_quality") == 1
    assert g("tierfleet_route_alert", "model", "qwen3:4b", alert="cost_per_request") == 0
    # By policy version: the same jobs under the version that routed them.
    assert g("tierfleet_route_requests", "policy_version", "v0001") == 6
    assert g("tierfleet_route_small_quality", "policy_version", "v0001") == pytest.approx(0.9)
    # Bounded labels: by, route (a model or a version) and alert; never a job id or a word.
    route_series = [k for k in got if k[0].startswith("tierfleet_route_")]
    assert route_series
    assert {name for _, labels in route_series for name, _ in labels} <= {"by", "route", "alert"}
    assert {v for _, labels in route_series for n, v in labels if n == "route"} == {
        "gpt-5.5", "qwen3:4b", "v0001"}
    assert SECRET not in text and "memo" not in text and "sh.new0" not in text


def test_route_stats_are_cached_between_scrapes(fleet: tuple[FleetConfig, Any, float]) -> None:
    cfg, r, now = fleet
    clock = [now]
    c = FleetCollector(r, cfg, clock=lambda: clock[0])
    first = c.routes()
    Ledger(r, cfg, write_jsonl=False).record(job("late", now - 10, cost_usd=1.0))
    clock[0] += 30
    assert c.routes() is first  # within the minute: no second read of two windows
    clock[0] += 60
    assert c.routes()[0].now["gpt-5.5"].requests == 5


def test_no_traffic_no_route_series_and_a_broken_ledger_keeps_the_rest(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    text = generate_latest(fleet_registry(fake_redis, core_config)).decode()
    assert "tierfleet_route_requests{" not in text and "tierfleet_redis_up 1.0" in text
    c = FleetCollector(fake_redis, core_config)

    def broken(a: float, b: float) -> list[Any]:
        raise RuntimeError("database is down")

    c._records = broken
    names = {m.name for m in c.collect()}
    assert "tierfleet_queue_depth" in names and "tierfleet_route_alert" not in names
