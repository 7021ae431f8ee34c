"""Model tiers end to end: real workers, simulated hosts speaking the real wire formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.harness import ModelFleet
from tierfleet.ledger import Ledger

pytestmark = pytest.mark.integration


def test_jobs_run_on_their_tiers_with_tokens_and_costs(tmp_path: Path, redis_url: str,
                                                      rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        for tier in ("local-mac", "local-gpu", "paid"):
            fleet.start(tier)
        d = fleet.dispatcher()
        summary = d.submit({"kind": "summary", "prompt": "Summarize: the build broke twice today.",
                            "workflow": "inbox"})
        code = d.submit({"kind": "code", "prompt": "Write a Python function that parses ISO dates."})
        writing = d.submit({"kind": "writing", "prompt": "Write release notes for 4.2.",
                            "tier": "paid", "workflow": "releases"})
        s, c, w = d.results_for([summary.id, code.id, writing.id], timeout=60)
        assert (s.tier, c.tier, w.tier) == ("local-mac", "local-gpu", "paid"), fleet.dump_logs()
        for r in (s, c, w):
            assert r.ok and r.simulated and r.text and r.tokens_in > 0 and r.tokens_out > 0
        assert s.cost_usd == 0 and c.cost_usd == 0
        assert w.cost_usd > 0
        ledger = Ledger(rclient, fleet.config)
        [paid_attempt] = ledger.job_attempts(writing.id)
        expect = (paid_attempt.tokens_in * 3.0 + paid_attempt.tokens_out * 12.0) / 1e6
        assert paid_attempt.cost_usd == pytest.approx(expect)


def test_refusal_escalates_one_tier_up_and_both_attempts_are_billed(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        fleet.start("local-mac")
        fleet.start("local-gpu")
        fleet.sim.fault("sim-ollama", "refusal", count=1)
        d = fleet.dispatcher()
        h = d.submit({"kind": "summary", "prompt": "Summarize the whole quarterly report in detail."})
        r = d.result(h.id, timeout=60)
        assert r.ok and r.trail == ["local-mac", "local-gpu"], (r, fleet.dump_logs())
        attempts = Ledger(rclient, fleet.config).job_attempts(h.id)
        assert [a.outcome for a in attempts] == ["escalated", "ok"]
        assert [a.tier for a in attempts] == ["local-mac", "local-gpu"]
        assert "refused" in (attempts[0].error or "")


def test_a_cap_the_producer_set_is_not_a_reason_to_escalate(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        fleet.start("local-mac")
        d = fleet.dispatcher()
        h = d.submit({"kind": "summary", "prompt": "Summarize the quarterly report.",
                      "max_tokens": 3})
        r = d.result(h.id, timeout=60)
        assert r.ok and r.trail == ["local-mac"] and r.tokens_out <= 3, r


def test_bad_request_fails_with_the_hosts_message_without_fallback(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        fleet.start("local-mac")
        fleet.sim.fault("sim-ollama", "auth")
        d = fleet.dispatcher()
        h = d.submit({"kind": "summary", "prompt": "Summarize this."})
        r = d.result(h.id, timeout=30)
        assert r.status.value == "failed" and r.trail == ["local-mac"], r
        assert "sim-ollama" in (r.error or "")


def test_context_too_long_skips_tiers_with_no_larger_window(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        for tier in ("local-gpu", "local-mac", "runpod"):
            fleet.start(tier)
        fleet.sim.fault("sim-gpu", "context")
        d = fleet.dispatcher()
        h = d.submit({"kind": "code", "prompt": "Refactor this module (pretend it is huge)."})
        r = d.result(h.id, timeout=60)
        # local-mac's window (32,768) is no larger than the GPU box's: straight to Runpod.
        assert r.ok and r.trail == ["local-gpu", "runpod"], (r, fleet.dump_logs())
        assert fleet.sim.counters("sim-ollama").get("chat", 0) == 0
