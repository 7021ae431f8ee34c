"""The ledger in SQL (SQLite here): drained from the record stream in batches, idempotent by
record key, trimmed only below every reader, read back by reports with the same figures."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

import fakeredis
import pytest

from tierfleet.config import FleetConfig
from tierfleet.jobs import Attempt
from tierfleet.ledger import Ledger, LedgerExport, read_jsonl
from tierfleet.ledger_sql import SqlLedger, SqlLedgerWriter
from tierfleet.reports.reconcile import ledger_usage, read_openai_usage, reconcile
from tierfleet.reports.spend import build_report, report

OUTCOMES = ["ok", "ok", "ok", "fallback", "host_error", "escalated", "failed"]


def fill(config: FleetConfig, client: fakeredis.FakeRedis, n: int, seed: int = 1,
         prefix: str = "j") -> list[Attempt]:
    rng = random.Random(seed)
    ledger = Ledger(client, config)
    now = time.time()
    out = []
    for i in range(n):
        tier = rng.choice(["paid", "local-mac", "runpod"])
        host, model = {"paid": ("openai", "gpt-5.5"), "local-mac": ("ollama", "qwen3:4b"),
                       "runpod": ("runpod", "qwen3-coder:30b")}[tier]
        a = Attempt(job_id=f"{prefix}{i // 2}", attempt=1 + i % 2, workflow=rng.choice(["inbox", "code"]),
                    kind="summary", tier=tier, host=host, model=model, tokens_in=rng.randint(10, 900),
                    tokens_out=rng.randint(1, 400), latency_s=rng.random(), outcome=rng.choice(OUTCOMES),
                    call=f"c{i}", ts=now - rng.uniform(0, 5 * 86400))
        ledger.record(a)
        out.append(a)
    return out


@pytest.fixture
def sql_config(core_config: FleetConfig, tmp_path: Path) -> FleetConfig:
    core_config.ledger.url = f"sqlite:///{tmp_path / 'ledger.db'}"
    return core_config


def test_the_writer_moves_every_record_once_and_reports_agree(
        sql_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    url, sql_config.ledger.url = sql_config.ledger.url, None
    fill(sql_config, fake_redis, 300)  # Redis keeps its day lists: a report to compare with
    sql_config.ledger.url = url
    writer = SqlLedgerWriter(fake_redis, sql_config)
    assert writer.drain(batch=64) == 300
    assert writer.drain() == 0
    assert writer.sql.count() == 300
    end = time.time()
    from_redis = report("7d", "tier", config=sql_config, redis=fake_redis, end=end, sql_url="")
    from_sql = report("7d", "tier", config=sql_config, redis=fake_redis, end=end,
                      sql_url=sql_config.ledger.url)
    assert from_sql.model_dump() == from_redis.model_dump()
    totals = writer.sql.totals(0, time.time() + 1, "tier")
    redis_totals = Ledger(fake_redis, sql_config).totals(7, "tier")
    for tier, t in totals.items():
        r = redis_totals[tier]
        got = (t.attempts, t.jobs, t.cost_nusd, t.tokens_in)
        assert got == (r.attempts, r.jobs, r.cost_nusd, r.tokens_in)


def test_a_writer_killed_after_its_commit_writes_the_batch_again_harmlessly(
        sql_config: FleetConfig, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(sql_config, fake_redis, 120)
    writer = SqlLedgerWriter(fake_redis, sql_config)
    real_set = fake_redis.set

    def die_moving_the_cursor(name: str, *a: object, **kw: object) -> object:
        if name == writer.cursor_key:
            raise KeyboardInterrupt("killed between the SQL commit and the cursor update")
        return real_set(name, *a, **kw)

    monkeypatch.setattr(fake_redis, "set", die_moving_the_cursor)
    with pytest.raises(KeyboardInterrupt):
        writer.drain(batch=50)
    monkeypatch.setattr(fake_redis, "set", real_set)
    fake_redis.delete(writer.lock_key)  # the dead writer's lock expires
    assert writer.sql.count() == 50  # the first batch committed
    assert SqlLedgerWriter(fake_redis, sql_config).drain(batch=50) == 120  # re-sent from its cursor
    keys = writer.sql.keys()
    assert len(keys) == len(set(keys)) == 120


def test_the_stream_is_trimmed_only_below_both_readers(
        sql_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    fill(sql_config, fake_redis, 40)
    stream = "tierfleet:ledger:log"
    assert LedgerExport(fake_redis, sql_config).drain() == 40
    assert fake_redis.xlen(stream) == 40  # the SQL writer has read nothing yet
    assert SqlLedgerWriter(fake_redis, sql_config).drain() == 40
    assert fake_redis.xlen(stream) <= 1
    fill(sql_config, fake_redis, 10, seed=2, prefix="k")
    assert SqlLedgerWriter(fake_redis, sql_config).drain() == 10
    assert LedgerExport(fake_redis, sql_config).drain() == 10
    assert len(read_jsonl(sql_config.ledger.dir)) == 50
    assert SqlLedger(sql_config.ledger.url or "").count() == 50


def test_redis_keeps_a_short_window_once_sql_holds_the_ledger(
        sql_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    assert Ledger(fake_redis, sql_config).retention_s == 3 * 86400
    fill(sql_config, fake_redis, 10)
    assert fake_redis.keys("tierfleet:ledger:day:*") == []  # SQL serves the reports
    sql_config.ledger.redis_retention_days = 1
    assert Ledger(fake_redis, sql_config).retention_s == 86400
    sql_config.ledger.url = None
    sql_config.ledger.redis_retention_days = None
    assert Ledger(fake_redis, sql_config).retention_s == 400 * 86400


def test_reconcile_prints_differences_per_model_and_day(
        sql_config: FleetConfig, fake_redis: fakeredis.FakeRedis, tmp_path: Path) -> None:
    sql_config.ledger.url = None
    fill(sql_config, fake_redis, 60)
    sql_config.ledger.url = None
    recs = Ledger(fake_redis, sql_config).raw_between(0, 4e9)
    ours = ledger_usage(recs, hosts={"openai"})
    path = tmp_path / "usage.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start_time", "end_time", "model", "num_model_requests", "input_tokens",
                    "output_tokens", "project_id"])
        for i, ((day, model), u) in enumerate(sorted(ours.items())):
            extra = 7 if i == 0 else 0  # the provider billed 7 more input tokens on one day
            ts = int(time.mktime(time.strptime(day + " 12", "%Y-%m-%d %H")))
            w.writerow([ts, ts + 60, model, u.requests, u.tokens_in + extra, u.tokens_out, "p"])
    provider = read_openai_usage(path)
    [diff] = reconcile(ours, provider)
    assert diff.fields == ["tokens_in"] and diff.provider.tokens_in - diff.ledger.tokens_in == 7
    assert build_report(recs, config=sql_config, start=0, end=4e9).jobs >= 0
