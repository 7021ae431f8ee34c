"""The ledger: exact costs, billed once under double delivery, aggregates that match the records."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tierfleet.config import FleetConfig
from tierfleet.jobs import Attempt
from tierfleet.ledger import DIMENSIONS, Ledger, LedgerExport, day_of, read_jsonl, scrub_error
from tierfleet.pricing import to_nanos

NOW = 1_760_000_000.0  # a fixed instant, so day buckets are known


def fleet(tmp_path: Path, **extra: Any) -> FleetConfig:
    data: dict[str, Any] = {
        "key_prefix": "tfl",
        "tiers": {
            "rules": {"place": "rules"},
            "local-gpu": {"place": "local", "models": {"default": "coder"}, "fallback": ["paid"]},
            "runpod": {"place": "rented", "models": {"default": "coder"}},
            "paid": {"place": "paid", "models": {"default": "gpt-5.5"}},
        },
        "hosts": {
            "gpu": {
                "kind": "ollama",
                "url": "http://127.0.0.1:1",
                "tier": "local-gpu",
                "models": ["coder"],
            },
            "rp": {
                "kind": "runpod",
                "url": "http://127.0.0.1:2",
                "tier": "runpod",
                "models": ["coder"],
                "cost_per_second": 0.0005,
            },
            "provider": {
                "kind": "openai",
                "url": "http://127.0.0.1:3",
                "tier": "paid",
                "models": ["gpt-5.5"],
            },
        },
        "models": {"coder": {}, "gpt-5.5": {"input_per_mtok": 3.0, "output_per_mtok": 12.0}},
        "ledger": {"dir": str(tmp_path / "ledger")},
        "policy": {"kind_tiers": {"chat": "local-gpu", "code": "local-gpu", "writing": "paid"}},
    }
    data.update(extra)
    return FleetConfig(**data)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def attempt(**kw: Any) -> Attempt:
    base: dict[str, Any] = {
        "job_id": "job-1",
        "attempt": 1,
        "workflow": "coding",
        "kind": "code",
        "tier": "paid",
        "host": "provider",
        "model": "gpt-5.5",
        "tokens_in": 1000,
        "tokens_out": 500,
        "latency_s": 1.5,
        "ts": NOW,
    }
    base.update(kw)
    return Attempt(**base)


def snapshot(r: fakeredis.FakeRedis) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in r.keys("*"):
        t = r.type(k)
        if t == b"hash":
            out[k] = r.hgetall(k)
        elif t == b"list":
            out[k] = r.lrange(k, 0, -1)
    return out


def test_record_prices_the_attempt_and_its_baseline(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    cfg = fleet(tmp_path)
    ledger = Ledger(r, cfg)
    assert ledger.record(attempt()).new is True
    [got] = ledger.job_attempts("job-1")
    # 1000 x $3/M + 500 x $12/M; the baseline is the same model here
    assert got.cost_usd == pytest.approx(0.009)
    assert got.baseline_cost_usd == pytest.approx(0.009)
    runpod = attempt(job_id="job-2", tier="runpod", host="rp", model="coder", latency_s=10.2)
    ledger.record(runpod)
    [rp] = ledger.job_attempts("job-2")
    assert rp.cost_usd == pytest.approx(11 * 0.0005)  # 11 started seconds
    assert rp.baseline_cost_usd == pytest.approx(0.009)


def test_costs_set_by_the_worker_are_kept(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    ledger.record(attempt(cost_usd=0.0, baseline_cost_usd=0.5))
    [got] = ledger.job_attempts("job-1")
    assert (got.cost_usd, got.baseline_cost_usd) == (0.0, 0.5)


def test_double_delivery_is_billed_once(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    cfg = fleet(tmp_path)
    ledger = Ledger(r, cfg)
    assert ledger.record(attempt()).new is True
    before = snapshot(r)
    # Redelivered: same job and attempt, even with different figures.
    again = ledger.record(attempt(tokens_in=9999, ts=NOW + 5))
    assert again.new is False
    assert again.job_cost_usd == pytest.approx(0.009)  # the first delivery's price, not a second one
    assert snapshot(r) == before
    totals = ledger.totals(1, "total", end=NOW)["all"]
    assert (totals.jobs, totals.attempts, totals.cost_nusd) == (1, 1, to_nanos(0.009))
    assert LedgerExport(r, cfg).drain() == 1  # what the workers' export thread does
    lines = (Path(cfg.ledger.dir) / f"token-usage-{day_of(NOW)}.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["tokens_in"] == 1000


def test_concurrent_deliveries_record_once(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        results.append(ledger.record(attempt()).new)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert ledger.totals(1, "total", end=NOW)["all"].attempts == 1


def test_fallback_then_success_counts_one_job_one_baseline(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    ledger.record(
        attempt(
            attempt=1,
            tier="local-gpu",
            host="gpu",
            model="coder",
            tokens_in=0,
            tokens_out=0,
            latency_s=0.2,
            outcome="fallback",
            error="host down",
        )
    )
    ledger.record(attempt(attempt=2, fallbacks=1, ts=NOW + 1))
    recs = ledger.job_attempts("job-1")
    assert [a.attempt for a in recs] == [1, 2]
    assert recs[0].baseline_cost_usd == 0.0  # the baseline is counted once, on the final attempt
    total = ledger.totals(1, "total", end=NOW + 1)["all"]
    assert (total.jobs, total.attempts, total.fallbacks, total.fallback_jobs) == (1, 2, 1, 1)
    assert total.baseline_nusd == to_nanos(0.009)
    by_tier = ledger.totals(1, "tier", end=NOW + 1)
    assert by_tier["local-gpu"].jobs == 0 and by_tier["local-gpu"].attempts == 1
    assert by_tier["paid"].jobs == 1


def test_escalation_is_flagged_and_not_mistaken_for_fallback(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    ledger.record(attempt(attempt=1, tier="local-gpu", host="gpu", model="coder", outcome="escalated"))
    # The worker's fallbacks count is the trail length, which includes the escalation.
    ledger.record(attempt(attempt=2, fallbacks=1, ts=NOW + 1))
    total = ledger.totals(1, "total", end=NOW + 1)["all"]
    assert (total.escalations, total.escalated_jobs, total.fallback_jobs) == (1, 1, 0)


def test_cached_answers_cost_nothing_and_count_as_hits(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    ledger.record(attempt(outcome="cached", cache_hit=True))
    [got] = ledger.job_attempts("job-1")
    assert got.cost_usd == 0.0
    assert got.baseline_cost_usd == pytest.approx(0.009)
    assert ledger.totals(1, "workflow", end=NOW)["coding"].cache_hits == 1


def test_aggregates_equal_the_sum_of_raw_records(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    for i in range(30):
        ledger.record(
            attempt(
                job_id=f"j{i}",
                workflow=("a", "b", "c")[i % 3],
                tokens_in=100 * i,
                tokens_out=7 * i,
                ts=NOW - i * 3600,
            )
        )
    records = ledger.records(3, end=NOW)
    assert len(records) == 30
    for dim in DIMENSIONS:
        totals = ledger.totals(3, dim, end=NOW)
        assert sum(t.cost_nusd for t in totals.values()) == sum(to_nanos(a.cost_usd) for a in records)
        assert sum(t.tokens_in for t in totals.values()) == sum(a.tokens_in for a in records)
        assert sum(t.jobs for t in totals.values()) == 30


def test_records_since_filters_by_time(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    ledger.record(attempt(job_id="old", ts=NOW - 40 * 86400))
    ledger.record(attempt(job_id="new", ts=NOW - 3600))
    assert [a.job_id for a in ledger.records(30, end=NOW)] == ["new"]
    assert {a.job_id for a in ledger.records(60, end=NOW)} == {"old", "new"}


def test_keys_are_prefixed_and_expire(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path), retention_days=10)
    ledger.record(attempt(ts=time.time()))
    keys = r.keys("*")
    assert keys and all(k.startswith(b"tfl:ledger:") for k in keys)
    # Everything expires but the export stream, which the exporter trims as it writes.
    assert all(0 < r.ttl(k) <= 10 * 86400 for k in keys if k != b"tfl:ledger:log")


def test_errors_are_scrubbed_of_credentials(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    cfg = fleet(tmp_path)
    ledger = Ledger(r, cfg)
    secret = "sk-proj-ABCDEFGHIJKLMNOP1234"
    ledger.record(attempt(outcome="failed", error=f"401 Authorization: Bearer {secret} rejected"))
    stored = b"".join(v for k in r.keys("*") if r.type(k) == b"list" for v in r.lrange(k, 0, -1))
    LedgerExport(r, cfg).drain()
    on_disk = (Path(cfg.ledger.dir) / f"token-usage-{day_of(NOW)}.jsonl").read_text()
    assert secret.encode() not in stored and secret not in on_disk
    assert "[redacted]" in on_disk
    assert scrub_error("api_key=abc123xyz and x" * 100).startswith("api_key=[redacted]")
    assert len(scrub_error("x" * 10_000) or "") == 300


def test_record_returns_the_jobs_running_cost(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    first = ledger.record(attempt(attempt=1, outcome="escalated"))
    second = ledger.record(attempt(attempt=2, ts=NOW + 1))
    assert first.job_cost_usd == pytest.approx(0.009)
    assert second.job_cost_usd == pytest.approx(0.018)
    assert second.job_cost_usd == pytest.approx(sum(a.cost_usd for a in ledger.job_attempts("job-1")))


def test_rented_time_is_priced_by_the_seconds_the_host_billed(r: fakeredis.FakeRedis,
                                                              tmp_path: Path) -> None:
    ledger = Ledger(r, fleet(tmp_path))
    rp = attempt(tier="runpod", host="rp", model="coder", latency_s=10.2)
    assert ledger.record(rp, seconds=3.2).job_cost_usd == pytest.approx(4 * 0.0005)


def test_every_record_reaches_the_jsonl_once_even_when_an_export_is_repeated(
        r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    cfg = fleet(tmp_path)
    ledger = Ledger(r, cfg)
    for i in range(5):
        ledger.record(attempt(job_id=f"j{i}"))
    export = LedgerExport(r, cfg)
    assert export.drain() == 5
    # A crash after the append but before the cursor moved: the same lines again.
    r.delete(export.cursor_key)
    ledger.record(attempt(job_id="j5"))
    export.drain()
    folder = Path(cfg.ledger.dir)
    on_disk = [json.loads(x) for f in folder.glob("*.jsonl") for x in f.read_text().splitlines()]
    assert len(on_disk) >= 6
    assert sorted(rec["job_id"] for rec in read_jsonl(folder)) == [f"j{i}" for i in range(6)]
    assert export.drain() == 0


def test_a_hung_or_failing_disk_never_blocks_recording(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    cfg = fleet(tmp_path)
    Path(cfg.ledger.dir).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.ledger.dir).write_text("not a folder")  # every export fails
    ledger = Ledger(r, cfg)
    assert ledger.record(attempt(job_id="a")).new  # recorded in Redis all the same
    with pytest.raises(OSError):
        LedgerExport(r, cfg).drain()
    assert r.xlen(keys_ledger_log(cfg)) == 1  # kept for the next export


def keys_ledger_log(cfg: FleetConfig) -> str:
    from tierfleet import keys

    return keys.ledger_log(cfg)
