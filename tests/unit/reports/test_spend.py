"""Reports on hand-computed ledgers, the alert thresholds, charts, and the CLI on a real Redis."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import typer
from typer.testing import CliRunner

from tierfleet.cli.money import register
from tierfleet.config import FleetConfig
from tierfleet.jobs import Attempt
from tierfleet.ledger import Ledger
from tierfleet.reports.spend import check, parse_since, plot_report, previous_report, report

NOW = 1_760_000_000.0
DAY = 86400.0

FLEET_TOML = """
key_prefix = "tfr"

[tiers.rules]
place = "rules"

[tiers.local-gpu]
place = "local"
models = {{ default = "coder" }}
fallback = ["runpod", "paid"]

[tiers.runpod]
place = "rented"
models = {{ default = "coder" }}

[tiers.paid]
place = "paid"
models = {{ default = "gpt-5.5" }}

[hosts.gpu]
kind = "ollama"
url = "http://127.0.0.1:1"
tier = "local-gpu"
models = ["coder"]

[hosts.rp]
kind = "runpod"
url = "http://127.0.0.1:2"
tier = "runpod"
models = ["coder"]
cost_per_second = 0.0005

[hosts.provider]
kind = "openai"
url = "http://127.0.0.1:3"
tier = "paid"
models = ["gpt-5.5"]

[models.coder]

[models."gpt-5.5"]
input_per_mtok = 3.0
output_per_mtok = 12.0

[policy.kind_tiers]
summary = "local-gpu"
code = "local-gpu"
writing = "paid"

[ledger]
dir = "{ledger}"
"""


def fleet(tmp_path: Path, redis_url: str = "redis://127.0.0.1:1/0") -> tuple[FleetConfig, Path]:
    import tomllib

    path = tmp_path / "fleet.toml"
    text = f'redis_url = "{redis_url}"\n' + FLEET_TOML.format(ledger=tmp_path / "ledger")
    path.write_text(text)
    return FleetConfig(**tomllib.loads(text)), path


def att(job_id: str, **kw: Any) -> Attempt:
    base: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "workflow": "inbox",
        "kind": "summary",
        "tier": "local-gpu",
        "host": "gpu",
        "model": "coder",
        "tokens_in": 1000,
        "tokens_out": 100,
        "latency_s": 1.0,
        "ts": NOW - DAY,
    }
    base.update(kw)
    return Attempt(**base)


def day_of_jobs(ledger: Ledger) -> None:
    """Six jobs, hand-priced (gpt-5.5 at $3/$12 per M is the baseline):

    inbox   3 local jobs 1000/100 (latency 1, 2, 3 s): $0, baseline 3 x $0.0042
    inbox   1 cached answer 1000/100 (0.01 s):         $0, baseline $0.0042
    coding  local-gpu fell back (0.5 s), runpod ok 2000/1000 in 9.5 s: 10 started
            seconds x $0.0005 = $0.005, baseline $0.006 + $0.012 = $0.018, latency 10 s
    legal   paid ok 1000/500 (4 s): $0.003 + $0.006 = $0.009, baseline the same
    """
    for i, lat in enumerate((1.0, 2.0, 3.0)):
        ledger.record(att(f"in{i}", latency_s=lat, ts=NOW - 2 * DAY + i))
    ledger.record(att("in-cached", outcome="cached", cache_hit=True, latency_s=0.01))
    ledger.record(
        att(
            "code1",
            workflow="coding",
            kind="code",
            tokens_in=0,
            tokens_out=0,
            latency_s=0.5,
            outcome="fallback",
            error="connection refused",
        )
    )
    ledger.record(
        att(
            "code1",
            attempt=2,
            workflow="coding",
            kind="code",
            tier="runpod",
            host="rp",
            tokens_in=2000,
            tokens_out=1000,
            latency_s=9.5,
            fallbacks=1,
            ts=NOW - DAY + 1,
        )
    )
    ledger.record(
        att(
            "legal1",
            workflow="legal",
            kind="writing",
            tier="paid",
            host="provider",
            model="gpt-5.5",
            tokens_in=1000,
            tokens_out=500,
            latency_s=4.0,
        )
    )


def test_report_figures_match_the_hand_computation(tmp_path: Path) -> None:
    cfg, _ = fleet(tmp_path)
    r = fakeredis.FakeRedis()
    day_of_jobs(Ledger(r, cfg))
    rep = report("30d", "workflow", config=cfg, redis=r, end=NOW)
    assert (rep.jobs, rep.attempts) == (6, 7)
    assert (rep.tokens_in, rep.tokens_out) == (7000, 1900)
    assert rep.spend_usd == pytest.approx(0.014)
    assert rep.baseline_usd == pytest.approx(4 * 0.0042 + 0.018 + 0.009)
    assert rep.savings_usd == pytest.approx(0.0438 - 0.014)
    assert rep.savings_fraction == pytest.approx(0.0298 / 0.0438)
    assert rep.cost_per_job_usd == pytest.approx(0.014 / 6)
    assert rep.fallback_rate == pytest.approx(1 / 6)
    assert rep.escalation_rate == 0.0
    assert rep.cache_hit_rate == pytest.approx(1 / 6)
    assert rep.tier_share == pytest.approx({"local-gpu": 4 / 6, "paid": 1 / 6, "runpod": 1 / 6})
    # job latencies 0.01, 1, 2, 3, 4, 10 (the coding job: 0.5 + 9.5)
    assert rep.latency_p50_s == pytest.approx(2.5)
    assert rep.latency_p99_s == pytest.approx(10 - 0.05 * 6)
    # first record two days before the end: spend per day x 30
    assert rep.observed_days == pytest.approx(2.0, abs=1e-4)
    assert rep.monthly_spend_usd == pytest.approx(0.014 * 15, rel=1e-4)
    assert [row.key for row in rep.rows] == ["legal", "coding", "inbox"]
    inbox = rep.rows[2]
    assert (inbox.jobs, inbox.spend_usd) == (4, 0.0)
    assert inbox.baseline_usd == pytest.approx(0.0168)
    assert sum(row.spend_usd for row in rep.rows) == pytest.approx(rep.spend_usd, abs=1e-12)


def test_grouping_by_tier_bills_each_attempt_where_it_ran(tmp_path: Path) -> None:
    cfg, _ = fleet(tmp_path)
    r = fakeredis.FakeRedis()
    day_of_jobs(Ledger(r, cfg))
    rows = {row.key: row for row in report("30d", "tier", config=cfg, redis=r, end=NOW).rows}
    assert (rows["local-gpu"].attempts, rows["local-gpu"].jobs) == (5, 4)
    assert rows["runpod"].spend_usd == pytest.approx(0.005)
    assert rows["runpod"].fallback_rate == 1.0
    assert rows["paid"].spend_share == pytest.approx(0.009 / 0.014)


def test_latency_percentiles() -> None:
    cfg = FleetConfig(tiers={"local-gpu": {"place": "local"}}, policy={"kind_tiers": {"chat": "local-gpu"}})
    r = fakeredis.FakeRedis()
    ledger = Ledger(r, cfg, write_jsonl=False)
    for i in range(1, 101):
        ledger.record(
            Attempt(
                job_id=f"j{i}",
                attempt=1,
                workflow="w",
                kind="chat",
                tier="local-gpu",
                latency_s=float(i),
                ts=NOW - i,
            )
        )
    rep = report("1d", config=cfg, redis=r, end=NOW)
    assert (rep.latency_p50_s, rep.latency_p95_s, rep.latency_p99_s) == pytest.approx((50.5, 95.05, 99.01))


def test_parse_since() -> None:
    assert parse_since("30d") == 30 * DAY
    assert parse_since("12h") == 12 * 3600
    assert parse_since("2w") == 14 * DAY
    assert parse_since("7") == 7 * DAY
    assert parse_since("3650d") == 3650 * DAY
    # Past ten years the start is no date datetime can hold; NaN is no period at all.
    for bad in ("", "30x", "-1d", "0d", "3651d", "99999999d", 3651, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            parse_since(bad)


# -- alerts ---------------------------------------------------------------------------


def periods(tmp_path: Path, before: list[dict[str, Any]], now: list[dict[str, Any]]) -> Any:
    """Record jobs in the previous and the current 7-day period; return both reports."""
    cfg, _ = fleet(tmp_path)
    r = fakeredis.FakeRedis()
    ledger = Ledger(r, cfg, write_jsonl=False)
    for offset, jobs in ((8 * DAY, before), (DAY, now)):
        for i, kw in enumerate(jobs):
            ledger.record(att(f"{offset}-{i}", ts=NOW - offset + i, **kw))
    cur = report("7d", config=cfg, redis=r, end=NOW)
    return cur, previous_report(cur, config=cfg, redis=r)


def test_cost_per_job_alert_fires_above_20_percent(tmp_path: Path) -> None:
    cur, prev = periods(tmp_path, [{"cost_usd": 0.01}] * 4, [{"cost_usd": 0.0121}] * 4)
    assert prev.cost_per_job_usd == pytest.approx(0.01)
    [alert] = check(cur, prev)
    assert alert.name == "cost_per_job" and alert.value == pytest.approx(0.21)
    assert "21%" in alert.reason and "20%" in alert.reason
    cur, prev = periods(tmp_path, [{"cost_usd": 0.01}] * 4, [{"cost_usd": 0.0119}] * 4)
    assert check(cur, prev) == []
    assert check(cur, None) == []


def test_cost_alert_from_free_to_paying(tmp_path: Path) -> None:
    cur, prev = periods(tmp_path, [{"cost_usd": 0.0}] * 2, [{"cost_usd": 0.001}] * 2)
    [alert] = check(cur, prev)
    assert alert.name == "cost_per_job" and "from $0" in alert.reason


def test_fallback_and_escalation_rate_bounds(tmp_path: Path) -> None:
    ok = {"cost_usd": 0.0}
    fell = {"cost_usd": 0.0, "fallbacks": 1}
    # 1 of 5 fell back: exactly the 20% bound, no alert; 2 of 5: alert.
    cur, prev = periods(tmp_path, [ok], [fell] + [ok] * 4)
    assert cur.fallback_rate == pytest.approx(0.2) and check(cur, prev) == []
    cur, prev = periods(tmp_path, [ok], [fell] * 2 + [ok] * 3)
    [alert] = check(cur, prev)
    assert alert.name == "fallback_rate" and "40.0%" in alert.reason

    cfg, _ = fleet(tmp_path)
    r = fakeredis.FakeRedis()
    ledger = Ledger(r, cfg, write_jsonl=False)
    for i in range(6):  # 1 of 6 escalated: 16.7% > 15%
        if i == 0:
            ledger.record(att("e0", outcome="escalated", cost_usd=0.0))
            ledger.record(
                att(
                    "e0",
                    attempt=2,
                    tier="paid",
                    host="provider",
                    model="gpt-5.5",
                    fallbacks=1,
                    ts=NOW - DAY + 1,
                )
            )
        else:
            ledger.record(att(f"ok{i}"))
    cur = report("7d", config=cfg, redis=r, end=NOW)
    assert cur.fallback_rate == 0.0
    [alert] = check(cur, None)
    assert alert.name == "escalation_rate" and alert.value == pytest.approx(1 / 6)


# -- charts and CLI -------------------------------------------------------------------


def assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 2_000_000
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 300
    return width, height


def test_plot_is_a_readable_png(tmp_path: Path) -> None:
    cfg, _ = fleet(tmp_path)
    r = fakeredis.FakeRedis()
    day_of_jobs(Ledger(r, cfg))
    rep = report("30d", config=cfg, redis=r, end=NOW)
    assert_png(plot_report(rep, tmp_path / "spend.png"))
    empty = report("1d", config=cfg, redis=r, end=NOW + 30 * DAY)
    assert empty.jobs == 0 and empty.savings_fraction is None
    assert_png(plot_report(empty, tmp_path / "empty.png"))


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_report_without_redis_is_one_clear_line(tmp_path: Path) -> None:
    _, path = fleet(tmp_path, "redis://:hunter2@127.0.0.1:1/0")
    res = CliRunner().invoke(cli(), ["report", "--config", str(path)])
    assert res.exit_code == 2
    assert "cannot read the ledger from Redis" in res.stderr
    assert "hunter2" not in res.output and "Traceback" not in res.output
    assert not isinstance(res.exception, redis.RedisError)


def test_package_level_report_is_a_function_beside_the_reports_wing(tmp_path: Path) -> None:
    import tierfleet
    import tierfleet.reports.spend  # importing the wing must not rebind the package's function

    cfg, _ = fleet(tmp_path)
    r = fakeredis.FakeRedis()
    day_of_jobs(Ledger(r, cfg))
    assert callable(tierfleet.report) and not isinstance(tierfleet.report, type(tierfleet))
    first = tierfleet.report(since="30d", by="tier", config=cfg, redis=r, end=NOW)
    again = tierfleet.report("30d", "tier", config=cfg, redis=r, end=NOW)
    assert first.jobs == again.jobs == 6 and first.by == "tier"


def test_the_report_says_what_savings_compare_with_and_flags_unpriced_compute(tmp_path: Path) -> None:
    cfg, _ = fleet(tmp_path)
    r = fakeredis.FakeRedis()
    day_of_jobs(Ledger(r, cfg))
    rep = report(since="30d", by="tier", config=cfg, redis=r, end=NOW)
    assert rep.baseline_model and rep.baseline_model in rep.baseline_basis
    assert cfg.unpriced_compute() == ["local-gpu"]  # this fleet's GPU box has no price
    assert rep.warnings == ["local compute priced at $0 on tier local-gpu: set cost_per_hour "
                            "(or cost_per_second) on its hosts"]
