"""Money bench: Redis memory per finished job before/after the SQL ledger, and report time
over a large SQL ledger. Prints the figures and writes them as JSON.

    python bench/money.py [--jobs 2000] [--records 1000000] [--out bench-money.json]

"Before" is today's layout (records kept in Redis for 400 days: job hash, day list, stream
until the JSONL export trims it). "After" sets ``ledger.url`` (SQLite here): the SQL writer
drains the stream, Redis skips the day lists and keeps records 3 days. Both store each
job's result as the fleet does. Steady state = bytes per job x jobs per day x days kept.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tierfleet.config import load_config
from tierfleet.jobs import Attempt, Result, Status
from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.ledger import Ledger, LedgerExport
from tierfleet.ledger_sql import SqlLedger, SqlLedgerWriter
from tierfleet.reports.spend import build_report
from tierfleet.store import ResultStore

JOBS_PER_DAY = 100_000


def _finish_jobs(client: redis.Redis, cfg: Any, n: int) -> None:
    ledger, results = Ledger(client, cfg), ResultStore(client, cfg)
    text = "Summary: the build failed twice because the cache key ignored the lockfile. " * 3
    for i in range(n):
        a = Attempt(job_id=f"bench-{i:08d}", attempt=1, workflow="inbox", kind="summary", tier="paid",
                    host="openai", model="gpt-5.5", tokens_in=420, tokens_out=96, latency_s=0.8,
                    call=f"{i:012x}", ts=time.time())
        ledger.record(a)
        results.save(Result(job_id=a.job_id, status=Status.SUCCEEDED, kind="summary", output=text,
                            text=text, tier="paid", host="openai", model="gpt-5.5", attempts=1,
                            trail=["paid"], tokens_in=420, tokens_out=96, cost_usd=0.00241))


def redis_bytes_per_job(n: int, sql: bool, folder: Path) -> dict[str, float]:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        cfg = load_config()
        cfg.ledger.dir = str(folder / ("jsonl-sql" if sql else "jsonl"))
        cfg.ledger.url = f"sqlite:///{folder / 'after.db'}" if sql else None
        client.flushall()
        base = int(client.info("memory")["used_memory"])
        _finish_jobs(client, cfg, n)
        LedgerExport(client, cfg).drain()
        if sql:
            SqlLedgerWriter(client, cfg).drain()
        total = (int(client.info("memory")["used_memory"]) - base) / n
        client.flushall()
        base = int(client.info("memory")["used_memory"])
        ledger = Ledger(client, cfg)
        for i in range(n):  # the ledger's part alone
            ledger.record(Attempt(job_id=f"l-{i:08d}", attempt=1, workflow="inbox", kind="summary",
                                  tier="paid", host="openai", model="gpt-5.5", tokens_in=420,
                                  tokens_out=96, latency_s=0.8, call=f"{i:012x}", ts=time.time()))
        LedgerExport(client, cfg).drain()
        if sql:
            SqlLedgerWriter(client, cfg).drain()
        ledger_only = (int(client.info("memory")["used_memory"]) - base) / n
        days = cfg.ledger.redis_days()
        return {"bytes_per_job_with_result": round(total), "ledger_bytes_per_job": round(ledger_only),
                "ledger_days_in_redis": days,
                "steady_ledger_mb_at_100k_jobs_a_day": round(ledger_only * JOBS_PER_DAY * days / 1e6, 1)}


def sql_report_time(records: int, folder: Path) -> dict[str, float]:
    cfg = load_config()
    url = f"sqlite:///{folder / 'big.db'}"
    sql = SqlLedger(url)
    rng = random.Random(7)
    now = time.time()
    t0 = time.perf_counter()
    chunk = 20_000
    for start in range(0, records, chunk):
        recs = []
        for i in range(start, min(start + chunk, records)):
            paid = i % 3 == 0
            ts = now - rng.uniform(0, 29 * 86400)
            recs.append({"job_id": f"j{i}", "attempt": 1, "call": f"c{i}", "ts": ts,
                         "workflow": ("inbox", "code", "ops", "billing")[i % 4], "kind": "summary",
                         "tier": "paid" if paid else "local-mac", "host": "openai" if paid else "ollama",
                         "model": "gpt-5.5" if paid else "qwen3:4b", "outcome": "ok",
                         "tokens_in": rng.randint(50, 2000), "tokens_out": rng.randint(10, 500),
                         "cost_usd": 0.002 if paid else 0.0, "baseline_cost_usd": 0.002,
                         "latency_s": rng.random(), "tokens_estimated": False, "cache_hit": False,
                         "simulated": False, "fallbacks": 0, "error": None, "privacy": "internal",
                         "job_final": True, "job_fallback": False, "job_escalated": False})
        sql.add_records(recs)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    totals = sql.totals(now - 30 * 86400, now + 1, "workflow")
    agg_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = build_report(sql.raw_between(now - 30 * 86400, now + 1), config=cfg, since="30d",
                       by="workflow", start=now - 30 * 86400, end=now + 1)
    full_s = time.perf_counter() - t0
    assert rep.jobs == records == sum(t.jobs for t in totals.values())
    return {"records": records, "load_s": round(load_s, 1), "sql_group_by_totals_s": round(agg_s, 2),
            "full_report_s": round(full_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--out", default="bench-money.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-bench-money-") as tmp:
        folder = Path(tmp)
        figures = {"redis_before": redis_bytes_per_job(args.jobs, False, folder),
                   "redis_after": redis_bytes_per_job(args.jobs, True, folder),
                   "sqlite_report": sql_report_time(args.records, folder)}
    print(json.dumps(figures, indent=2))
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
