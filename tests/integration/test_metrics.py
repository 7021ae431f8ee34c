"""Fleet-wide metrics: counters written to a real Redis, read back through the collector
and parsed from Prometheus' text format, as a scraper would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.fleets import rules_only
from tests.support.harness import write_config
from tierfleet.config import FleetConfig, load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.envelope import Delivery
from tierfleet.health import Breaker
from tierfleet.heartbeats import write_heartbeat
from tierfleet.jobs import Attempt
from tierfleet.lab.processes import free_port
from tierfleet.metrics import fleet_registry, latency_buckets, record_attempt
from tierfleet.store import Parking

FLEET = rules_only(local="qwen3:4b", paid="gpt-test", paid_price=(1.0, 4.0),
                   kinds={"summary": "local-mac", "chat": "local-mac", "code": "paid"},
                   paid_host="cloud")


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> FleetConfig:
    return load_config(write_config(tmp_path / "fleet.toml", redis_url, FLEET))


def scrape(client: redis.Redis, config: FleetConfig) -> dict[str, dict[tuple, float]]:
    """Samples by metric sample name, keyed by their sorted label items."""
    text = generate_latest(fleet_registry(client, config)).decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def att(**kw: object) -> Attempt:
    base: dict[str, object] = {"job_id": "j", "attempt": 1, "workflow": "w", "kind": "summary",
                               "tier": "local-mac", "ts": time.time()}
    return Attempt.model_validate({**base, **kw})


def test_record_attempt_counts_jobs_tokens_cost_and_latency(
    config: FleetConfig, rclient: redis.Redis
) -> None:
    attempts = [
        att(job_id="a", tier="rules", kind="dedupe", latency_s=0.001),
        att(job_id="b", tier="rules", kind="dedupe", latency_s=0.002),
        att(job_id="c", tier="rules", kind="dedupe", outcome="failed", latency_s=0.004,
            error="bad"),
        att(job_id="d", model="qwen3:4b", tokens_in=100, tokens_out=20, latency_s=0.7),
        att(job_id="e", model="qwen3:4b", tokens_in=50, tokens_out=5, latency_s=3.0),
        # fell back before reaching a model: counted, but no latency and no tokens
        att(job_id="f", model="qwen3:4b", outcome="fallback", error="host down"),
        att(job_id="f", attempt=2, tier="paid", kind="summary", model="gpt-test",
            tokens_in=1000, tokens_out=500, cost_usd=0.003, latency_s=500.0, fallbacks=1),
        # a cache hit spent no tokens and took no model time
        att(job_id="g", model="qwen3:4b", outcome="cached", tokens_in=40, tokens_out=9,
            cache_hit=True),
    ]
    for a in attempts:
        record_attempt(rclient, config, a)

    m = scrape(rclient, config)
    # Jobs: the final attempt of each (ok, failed, cached), by workflow; "f" once, on paid.
    final = m["tierfleet_jobs_total"]
    assert sum(final.values()) == len({a.job_id for a in attempts})
    assert final[(("kind", "summary"), ("outcome", "ok"), ("tier", "paid"),
                  ("workflow", attempts[-2].workflow))] == 1
    jobs = m["tierfleet_attempts_total"]
    assert jobs[(("kind", "dedupe"), ("outcome", "ok"), ("tier", "rules"))] == 2
    assert jobs[(("kind", "dedupe"), ("outcome", "failed"), ("tier", "rules"))] == 1
    assert jobs[(("kind", "summary"), ("outcome", "ok"), ("tier", "local-mac"))] == 2
    assert jobs[(("kind", "summary"), ("outcome", "fallback"), ("tier", "local-mac"))] == 1
    assert jobs[(("kind", "summary"), ("outcome", "cached"), ("tier", "local-mac"))] == 1
    assert jobs[(("kind", "summary"), ("outcome", "ok"), ("tier", "paid"))] == 1
    assert sum(jobs.values()) == len(attempts)

    tokens = m["tierfleet_tokens_total"]
    assert tokens == {
        (("direction", "in"), ("model", "qwen3:4b"), ("tier", "local-mac")): 150,
        (("direction", "out"), ("model", "qwen3:4b"), ("tier", "local-mac")): 25,
        (("direction", "in"), ("model", "gpt-test"), ("tier", "paid")): 1000,
        (("direction", "out"), ("model", "gpt-test"), ("tier", "paid")): 500,
    }
    assert m["tierfleet_cost_usd_total"] == {(("model", "gpt-test"), ("tier", "paid")): 0.003}
    assert m["tierfleet_workflow_cost_usd_total"] == {
        (("tier", "paid"), ("workflow", attempts[-2].workflow)): 0.003}

    # Histogram: cumulative buckets, +Inf == count, sum of the observed latencies.
    def bucket(tier: str, le: str) -> float:
        return m["tierfleet_job_latency_seconds_bucket"][(("le", le), ("tier", tier))]

    assert bucket("rules", "0.005") == 3 and bucket("rules", "+Inf") == 3
    assert bucket("local-mac", "0.5") == 0
    assert bucket("local-mac", "1.0") == 1
    assert bucket("local-mac", "2.5") == 1
    assert bucket("local-mac", "5.0") == 2
    assert bucket("local-mac", "+Inf") == 2  # the fallback and the cache hit are not timed
    # Buckets reach the task time limit: a 500 s attempt is in a finite bucket.
    assert bucket("paid", "120.0") == 0 and bucket("paid", "600.0") == 1
    assert bucket("paid", repr(float(config.reliability.task_time_limit_s))) == 1
    count = m["tierfleet_job_latency_seconds_count"]
    assert count[(("tier", "local-mac"),)] == 2
    assert m["tierfleet_job_latency_seconds_sum"][(("tier", "local-mac"),)] == pytest.approx(3.7)
    les = [k[0][1] for k in m["tierfleet_job_latency_seconds_bucket"] if k[1] == ("tier", "rules")]
    assert len(les) == len(latency_buckets(config)) + 1
    assert m["tierfleet_redis_up"][()] == 1


def test_counters_are_fleet_wide_across_clients(config: FleetConfig, redis_url: str) -> None:
    # Two "machines" (separate connections) add to the same series; a third scrapes.
    a = redis.Redis.from_url(redis_url, decode_responses=True)
    b = redis.Redis.from_url(redis_url, decode_responses=True)
    for i in range(5):
        record_attempt(a, config, att(job_id=f"a{i}", tier="rules", kind="dedupe"))
        record_attempt(b, config, att(job_id=f"b{i}", tier="rules", kind="dedupe"))
    scraper = redis.Redis.from_url(redis_url, decode_responses=True)
    jobs = scrape(scraper, config)["tierfleet_attempts_total"]
    assert jobs[(("kind", "dedupe"), ("outcome", "ok"), ("tier", "rules"))] == 10


def test_gauges_queue_depth_workers_breakers_parked_dead(
    config: FleetConfig, rclient: redis.Redis
) -> None:
    d = Dispatcher(config)
    for i in range(3):
        d.submit({"kind": "summary", "prompt": f"note {i}", "tier": "local-mac"})
    d.submit({"kind": "code", "prompt": "write a parser", "tier": "paid"})
    write_heartbeat(rclient, config, "mac-1@box", ["local-mac"], [], 2)
    write_heartbeat(rclient, config, "mac-2@box", ["local-mac"], ["tag-9"], 1)
    write_heartbeat(rclient, config, "rules-1@box", ["rules"], [], 1)
    breaker = Breaker(rclient, config)
    breaker.failure("cloud", "connection refused", hard_s=60)
    parking = Parking(rclient, config)
    p1, p2 = (Delivery(job=j, route=r) for j, r in
              (d.prepare({"id": i, "kind": "summary", "prompt": "x"}) for i in ("p1", "p2")))
    parking.park(p1, 0, "no tier up")
    parking.park(p2, 0, "no tier up")
    parking.bury(p2, "gave up")

    m = scrape(rclient, config)
    depth = m["tierfleet_queue_depth"]
    assert depth[(("tier", "local-mac"),)] == 3
    assert depth[(("tier", "paid"),)] == 1
    assert depth[(("tier", "rules"),)] == 0
    workers = m["tierfleet_workers_live"]
    assert workers[(("tier", "local-mac"),)] == 2
    assert workers[(("tier", "rules"),)] == 1
    assert workers[(("tier", "paid"),)] == 0
    # Nodes, their processes, and busy = nodes holding a delivery (fleetnumbers.py).
    assert m["tierfleet_worker_processes"][(("tier", "local-mac"),)] == 3
    assert m["tierfleet_workers_busy"][(("tier", "local-mac"),)] == 1
    assert m["tierfleet_workers_busy"][(("tier", "rules"),)] == 0
    breakers = m["tierfleet_breaker_state"]
    assert breakers[(("host", "cloud"),)] == 2
    assert breakers[(("host", "mac"),)] == 0
    assert m["tierfleet_parked_jobs"][()] == 1
    assert m["tierfleet_dead_letters"][()] == 1

    # Once the open period is over the breaker is half-open (one probe may pass).
    rclient.hset("tf:breaker:cloud", "open_until", time.time() - 1)
    assert scrape(rclient, config)["tierfleet_breaker_state"][(("host", "cloud"),)] == 1


def test_scrape_answers_when_redis_is_down(config: FleetConfig) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))
    m = scrape(dead, config)
    assert m["tierfleet_redis_up"][()] == 0
    assert "tierfleet_queue_depth" not in m
    # Recording never fails the job that finished: it logs and moves on.
    record_attempt(dead, config, att(job_id="z", tier="rules", kind="dedupe"))


@pytest.mark.integration
def test_metrics_command_serves_the_fleet(tmp_path: Path, redis_url: str,
                                          rclient: redis.Redis) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url, FLEET)
    config = load_config(cfg_path)
    record_attempt(rclient, config, att(job_id="x", tier="rules", kind="dedupe"))
    rclient.rpush("local-mac", "m1", "m2")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierfleet", "metrics", "--port", str(port)],
        env={**os.environ, "TIERFLEET_CONFIG": str(cfg_path)}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("tierfleet_queue_depth", (("tier", "local-mac"),))] == 2
        assert samples[("tierfleet_attempts_total",
                        (("kind", "dedupe"), ("outcome", "ok"), ("tier", "rules")))] == 1
        # Only the fleet's series: no process metrics of whichever machine serves them.
        assert not any(name.startswith("process_") for name, _ in samples)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
