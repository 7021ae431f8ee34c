"""The SQL ledger against real servers: the writer SIGKILLed mid-drain leaves every record in
SQL exactly once; SQLite and PostgreSQL give the same report on the same records; the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.support.harness import cli, write_config
from tests.support.postgres import postgres_server
from tierfleet.config import load_config
from tierfleet.ledger import day_of
from tierfleet.ledger_sql import SqlLedger, SqlLedgerWriter
from tierfleet.reports.spend import report

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def synthetic(client: redis.Redis, stream: str, n: int, now: float) -> None:
    """Records as the ledger writes them to its stream (the writer reads only the stream)."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        ts = now - (i % 5000) * 60
        rec = {"job_id": f"job-{i // 2}", "attempt": 1 + i % 2, "call": f"c{i}", "ts": ts,
               "workflow": ["inbox", "code", "ops"][i % 3], "kind": "summary",
               "tier": ["paid", "local-mac"][i % 2], "host": ["openai", "ollama"][i % 2],
               "model": ["gpt-5.5", "qwen3:4b"][i % 2], "outcome": "ok" if i % 2 else "fallback",
               "tokens_in": 100 + i % 50, "tokens_out": 20 + i % 7,
               "cost_usd": round((100 + i % 50) * 3e-6, 9) if i % 2 == 0 else 0.0,
               "baseline_cost_usd": 0.0004 if i % 2 else 0.0, "latency_s": 0.1 + (i % 10) / 10,
               "tokens_estimated": False, "cache_hit": False, "simulated": False, "fallbacks": 0,
               "error": None, "privacy": "internal", "job_final": bool(i % 2),
               "job_fallback": bool(i % 2), "job_escalated": False}
        pipe.xadd(stream, {"day": day_of(ts), "rec": json.dumps(rec, sort_keys=True)})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def test_a_writer_killed_mid_drain_leaves_every_record_in_sql_exactly_once(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    cfg_path.write_text(cfg_path.read_text().replace(
        "[ledger]\n", f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n'))
    cfg = load_config(cfg_path)
    n = 30_000
    synthetic(rclient, "tf:ledger:log", n, time.time())
    child = subprocess.Popen(
        [sys.executable, "-c", "from tierfleet.ledger_sql import SqlLedgerWriter; import redis; "
         "from tierfleet.config import load_config; c = load_config(); "
         "SqlLedgerWriter(redis.Redis.from_url(c.redis_url), c).drain(batch=500)"],
        env={**os.environ, "TIERFLEET_CONFIG": str(cfg_path), "PYTHONPATH": str(ROOT / "src")},
        start_new_session=True)
    cursor = "tf:ledger:sql:cursor"
    deadline = time.monotonic() + 60
    while not rclient.exists(cursor) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.005)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    sql = SqlLedger(cfg.ledger.url or "")
    partial = sql.count()
    assert 0 < partial < n, "the kill should land mid-drain"
    rclient.delete("tf:ledger:sql:lock")  # the dead writer's lock (it would expire)
    SqlLedgerWriter(rclient, cfg).drain(batch=500)
    keys = sql.keys()
    assert len(keys) == len(set(keys)) == n


def test_sqlite_and_postgresql_give_the_same_report_on_the_same_records(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    cfg = load_config(write_config(tmp_path / "fleet.toml", redis_url))
    now = time.time()
    synthetic(rclient, "tf:ledger:log", 4000, now)
    recs = [json.loads(f["rec"]) for _, f in rclient.xrange("tf:ledger:log")]
    with postgres_server() as pg_url:
        reports = []
        for url in (f"sqlite:///{tmp_path / 'a.db'}", pg_url):
            SqlLedger(url).add_records(recs)
            SqlLedger(url).add_records(recs[:100])  # a replay changes nothing
            reports.append((report("30d", "workflow", config=cfg, end=now + 1, sql_url=url),
                            SqlLedger(url).totals(0, now + 1, "tier")))
        (lite, lite_totals), (pg, pg_totals) = reports
        assert lite.jobs == pg.jobs == 2000
        assert lite.model_dump() == pg.model_dump()
        assert lite_totals == pg_totals and lite_totals["paid"].cost_nusd > 0


def test_ledger_export_csv_and_parquet_and_reconcile_from_the_cli(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    db = tmp_path / "ledger.db"
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    cfg_path.write_text(cfg_path.read_text().replace("[ledger]\n", f'[ledger]\nurl = "sqlite:///{db}"\n'))
    synthetic(rclient, "tf:ledger:log", 200, time.time())
    r = cli(["ledger-writer", "--once"], cfg_path)
    assert r.returncode == 0 and "200 records written" in r.stdout, r.stderr
    r = cli(["ledger", "export", "--format", "csv", "--out", str(tmp_path / "l.csv")], cfg_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "l.csv").open()))
    assert len(rows) == 200 and {"job_id", "cost_usd", "tokens_in"} <= set(rows[0])
    r = cli(["ledger", "export", "--format", "parquet", "--out", str(tmp_path / "l.parquet")], cfg_path)
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq
    assert pq.read_table(tmp_path / "l.parquet").num_rows == 200
    # The provider's usage: the ledger's paid calls per day, one day's requests off by one.
    per_day: dict[str, list[int]] = {}
    for row in rows:
        if row["host"] == "openai":
            d = per_day.setdefault(day_of(float(row["ts"])), [0, 0, 0])
            d[0] += 1
            d[1] += int(row["tokens_in"])
            d[2] += int(row["tokens_out"])
    usage = tmp_path / "usage.csv"
    with usage.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start_time", "model", "num_model_requests", "input_tokens", "output_tokens"])
        for i, (day, (req, tin, tout)) in enumerate(sorted(per_day.items())):
            w.writerow([f"{day}T00:00:00Z", "gpt-5.5", req + (1 if i == 0 else 0), tin, tout])
    # The records name host "openai" (the config's paid host is "provider"): say which
    # hosts this provider bills, or every day differs. The records span three hours back
    # from now, so they may cross midnight UTC: only the day given one more request differs.
    r = cli(["ledger", "reconcile", str(usage), "--host", "openai"], cfg_path)
    first = sorted(per_day)[0]
    assert r.returncode == 1 and first in r.stdout and "requests" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count("gpt-5.5") == 1, r.stdout
    n = per_day[first][0]
    assert f"{n} vs {n + 1}" in r.stdout, r.stdout  # the ledger side is counted
    r = cli(["report", "--source", "sql", "--json", "--since", "30d"], cfg_path)
    assert r.returncode == 0 and json.loads(r.stdout)["jobs"] == 100, r.stderr
