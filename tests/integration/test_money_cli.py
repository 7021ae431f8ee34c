"""``tierfleet budget set|show`` and the budget alerts of ``report --check``, as operators run them."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.harness import cli, write_config
from tierfleet.budgets import BudgetBook
from tierfleet.config import load_config
from tierfleet.jobs import Job

pytestmark = pytest.mark.integration


def test_budget_set_show_and_the_80_percent_alert(tmp_path: Path, redis_url: str,
                                                 rclient: redis.Redis) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    r = cli(["budget", "set", "fleet", "--limit-usd", "1.0"], cfg_path)
    assert r.returncode == 0 and "fleet, $1 per day" in r.stdout, r.stderr
    assert cli(["report", "--check"], cfg_path).returncode == 0
    book = BudgetBook(rclient, load_config(cfg_path))
    hold = book.reserve(Job(prompt="x"), 0.9, "h", hold_s=60)
    pipe = rclient.pipeline()
    book.spend(pipe, hold, 0.9)  # type: ignore[arg-type]
    pipe.execute()
    shown = cli(["budget", "show"], cfg_path)
    assert "fleet" in shown.stdout and "90%" in shown.stdout, shown.stdout
    check = cli(["report", "--check"], cfg_path)
    assert check.returncode == 1 and "budget:fleet" in check.stderr and "alert at 80%" in check.stderr
    bad = cli(["budget", "set", "x", "--limit-usd", "1", "--scope", "team:a"], cfg_path)
    assert bad.returncode != 0 and "scope" in (bad.stderr + bad.stdout)
