"""The spend report's CLI against a real redis-server (the rest of its tests are in unit/reports)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis
from typer.testing import CliRunner

from tests.unit.reports.test_spend import assert_png, att, cli, fleet
from tierfleet.ledger import Ledger


def test_cli_report_json_plot_and_check_on_real_redis(tmp_path: Path, redis_url: str) -> None:
    cfg, path = fleet(tmp_path, redis_url)
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client, cfg)
    now = time.time()
    for i in range(4):
        ledger.record(att(f"j{i}", ts=now - 60 * i, fallbacks=int(i < 2)))
    runner = CliRunner()
    res = runner.invoke(cli(), ["report", "--config", str(path), "--json", "--by", "tier"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["jobs"] == 4 and data["by"] == "tier" and data["rows"][0]["key"] == "local-gpu"

    png = tmp_path / "out.png"
    res = runner.invoke(cli(), ["report", "--config", str(path), "--plot", str(png), "--check"])
    assert res.exit_code == 1
    assert "fallback_rate" in res.stderr and "50.0% of jobs fell back" in res.stderr
    assert "Spend by workflow" in res.stdout
    assert_png(png)
    client.close()
