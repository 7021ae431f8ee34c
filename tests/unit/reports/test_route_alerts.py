"""Per-route alerts in ``tierfleet report --check``: cost per request by routed model
against the previous period, and the quality of small-routed answers from the labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from typer.testing import CliRunner

from tests.unit.reports.test_spend import DAY, NOW, att, cli, fleet
from tierfleet.config import FleetConfig
from tierfleet.labels import Label, LabelStore
from tierfleet.ledger import Ledger
from tierfleet.reports import spend
from tierfleet.reports.spend import check, report, route_check

SECRET = "zanzibar-merger-codeword"  # a prompt word that must never reach a report line
PAID = {"tier": "paid", "host": "provider", "model": "gpt-5.5"}
RENTED = {"tier": "runpod", "host": "rp", "model": "coder"}


def two_periods(r: Any, cfg: FleetConfig, before: list[dict[str, Any]],
                now: list[dict[str, Any]]) -> None:
    """Jobs in the previous 7 days (8 days ago) and in the current 7 days (1 day ago)."""
    ledger = Ledger(r, cfg, write_jsonl=False)
    for offset, jobs in ((8 * DAY, before), (DAY, now)):
        for i, kw in enumerate(jobs):
            kw = {"job_id": f"{offset:.0f}-{i}", **kw}
            ledger.record(att(kw.pop("job_id"), ts=NOW - offset + i, **kw))


def labels(r: Any, cfg: FleetConfig, offset: float, scores: list[float], model: str = "coder") -> None:
    store = LabelStore(r, cfg)
    for i, score in enumerate(scores):
        store.add(Label(id=f"feedback:{offset:.0f}-{i}", source="feedback", job_id=f"{offset:.0f}-l{i}",
                        ts=NOW - offset + i, kind="summary", tier="local-gpu", model=model,
                        routed_small=True, small_score=score, judge="producer", judge_version="1",
                        prompt=f"summarise the {SECRET} memo", note=f"about {SECRET}"))


def costs(model: dict[str, str], per_job: float, n: int = 4) -> list[dict[str, Any]]:
    return [{**model, "cost_usd": per_job}] * n


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FleetConfig, Path, fakeredis.FakeRedis]:
    cfg, path = fleet(tmp_path)
    return cfg, path, fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def test_cost_per_request_up_25_percent_on_one_route_fires(setup: Any) -> None:
    cfg, _, r = setup
    # The paid route costs 25% more per request; the rented one 20% less, so the fleet's
    # cost per job barely moves (+2.5%) and only the per-route check sees it.
    two_periods(r, cfg, costs(PAID, 0.01) + costs(RENTED, 0.01),
                costs(PAID, 0.0125) + costs(RENTED, 0.008))
    cur = report("7d", config=cfg, redis=r, end=NOW)
    assert [a.name for a in check(cur, None)] == []
    routes = route_check(cur, config=cfg, redis=r, sql_url="")
    assert routes.now["gpt-5.5"].cost_per_request == pytest.approx(0.0125)
    assert routes.before["gpt-5.5"].cost_per_request == pytest.approx(0.01)
    [alert] = routes.alerts
    assert (alert.name, alert.route) == ("cost_per_request", "gpt-5.5")
    assert alert.value == pytest.approx(0.25) and alert.threshold == cfg.ledger.alert_cost_increase
    assert "25%" in alert.reason and "20%" in alert.reason


def test_cost_per_request_up_10_percent_does_not_fire(setup: Any) -> None:
    cfg, _, r = setup
    two_periods(r, cfg, costs(PAID, 0.01), costs(PAID, 0.011))
    cur = report("7d", config=cfg, redis=r, end=NOW)
    assert route_check(cur, config=cfg, redis=r, sql_url="").alerts == []


def test_the_threshold_is_the_configs(setup: Any) -> None:
    cfg, _, r = setup
    cfg.ledger.alert_cost_increase = 0.05
    two_periods(r, cfg, costs(PAID, 0.01), costs(PAID, 0.011))
    cur = report("7d", config=cfg, redis=r, end=NOW)
    assert [a.name for a in route_check(cur, config=cfg, redis=r, sql_url="").alerts] == [
        "cost_per_request"]


def test_small_routed_quality_down_6_percent_fires_and_shadow_calls_do_not_count(setup: Any) -> None:
    cfg, _, r = setup
    labels(r, cfg, 8 * DAY, [1.0] * 100)
    labels(r, cfg, DAY, [1.0] * 94 + [0.0] * 6)
    # A shadow test's call on the paid tier is the label's cost, not the route's.
    two_periods(r, cfg, costs(PAID, 0.01),
                [*costs(PAID, 0.01), {**PAID, "cost_usd": 5.0, "job_id": "sh.x"}])
    cur = report("7d", config=cfg, redis=r, end=NOW)
    routes = route_check(cur, config=cfg, redis=r, sql_url="")
    assert routes.now["coder"].small_quality == pytest.approx(0.94)
    assert routes.now["gpt-5.5"].requests == 4
    [alert] = routes.alerts
    assert (alert.name, alert.route) == ("small_quality", "coder")
    assert alert.value == pytest.approx(0.06) and alert.threshold == cfg.learning.tolerance
    assert SECRET not in alert.reason


def test_small_routed_quality_down_3_percent_does_not_fire(setup: Any) -> None:
    cfg, _, r = setup
    labels(r, cfg, 8 * DAY, [1.0] * 100)
    labels(r, cfg, DAY, [1.0] * 97 + [0.0] * 3)
    cur = report("7d", config=cfg, redis=r, end=NOW)
    assert route_check(cur, config=cfg, redis=r, sql_url="").alerts == []


def run_check(monkeypatch: pytest.MonkeyPatch, path: Path, r: fakeredis.FakeRedis) -> Any:
    # The command opens its own client: one on the test's server.
    server = r.connection_pool.connection_kwargs["server"]
    monkeypatch.setattr(redis.Redis, "from_url",
                        lambda *a, **kw: fakeredis.FakeRedis(server=server, decode_responses=True))
    monkeypatch.setattr(spend.time, "time", lambda: NOW)  # the report's period ends at NOW
    return CliRunner().invoke(cli(), ["report", "--since", "7d", "--by", "model", "--check",
                                      "--config", str(path)])


def test_cli_check_prints_route_alerts_and_exits_1(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, path, r = setup
    two_periods(r, cfg, costs(PAID, 0.01) + costs(RENTED, 0.01),
                costs(PAID, 0.0125) + costs(RENTED, 0.008))
    labels(r, cfg, 8 * DAY, [1.0] * 100)
    labels(r, cfg, DAY, [1.0] * 94 + [0.0] * 6)
    res = run_check(monkeypatch, path, r)
    assert res.exit_code == 1, res.output
    assert "ALERT route:cost_per_request: gpt-5.5: cost per request rose 25%" in res.stderr
    assert "ALERT route:small_quality: coder: quality of small-routed answers fell 6%" in res.stderr
    assert "cost_per_job" not in res.stderr and "no alerts" not in res.stderr
    assert SECRET not in res.output


def test_cli_check_with_no_route_alert_exits_0(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, path, r = setup
    two_periods(r, cfg, costs(PAID, 0.01), costs(PAID, 0.011))
    labels(r, cfg, 8 * DAY, [1.0] * 100)
    labels(r, cfg, DAY, [1.0] * 100)
    res = run_check(monkeypatch, path, r)
    assert res.exit_code == 0, res.output
    assert "no alerts" in res.stderr and "ALERT" not in res.stderr
