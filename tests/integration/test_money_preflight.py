"""A worker started without its host's API key refuses to start; no job moves to paid."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.fleets import RUNPOD_KEY_ENV
from tests.support.harness import ModelFleet, Worker
from tierfleet.ledger import Ledger

pytestmark = pytest.mark.integration


def test_a_worker_without_its_key_exits_and_the_job_waits_for_a_configured_one(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        fleet.start("paid")  # a paid worker is up: a moved job would be billed there
        bad = Worker("runpod", fleet.config_path, env={RUNPOD_KEY_ENV: ""})
        with pytest.raises(RuntimeError, match="exited"):
            bad.start(rclient, timeout=60)
        assert bad.proc is not None and bad.proc.returncode not in (0, None)
        log = bad.log()
        assert "refuses to start" in log and RUNPOD_KEY_ENV in log and "sim-runpod" in log
        bad.stop()

        d = fleet.dispatcher()
        h = d.submit({"kind": "code", "prompt": "Write a parser for this log format.", "tier": "runpod"})
        fleet.start("runpod")  # the configured worker takes it
        r = d.result(h.id, timeout=60)
        assert r.ok and r.tier == "runpod" and r.trail == ["runpod"], (r, fleet.dump_logs())
        tiers = {a.tier for a in Ledger(rclient, fleet.config).job_attempts(h.id)}
        assert tiers == {"runpod"}
