"""finish.py: a rules job ends in one script that leaves Redis as the ordinary path does."""

from __future__ import annotations

from typing import Any

import fakeredis

from tierfleet import finish, keys
from tierfleet.config import FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.jobs import Attempt, Job, Kind, Result, Route, Status
from tierfleet.ledger import Ledger, day_of
from tierfleet.runner import Runner, Stored


def _rules_delivery(job_id: str, attempt: int = 1) -> Delivery:
    job = Job(id=job_id, kind=Kind.KEYWORD_ROUTE, input={"text": "my VPN broke"})
    return Delivery(job=job, route=Route(tier="rules", kind=Kind.KEYWORD_ROUTE), attempt=attempt)


def _state(r: fakeredis.FakeRedis, config: FleetConfig) -> dict[str, Any]:
    """Every counter the record moves (aggregates, metrics), without times."""
    out: dict[str, Any] = {}
    for k in sorted(r.keys("*")):
        if r.type(k) == "hash" and (":agg:" in k or ":metrics:" in k or k.endswith(":svc")):
            h = r.hgetall(k)
            # Field names all; values but the measured times (each run takes its own).
            out[k] = {f: v for f, v in h.items() if "latency" not in k and "latency" not in f
                      and not k.endswith(":svc")} | {
                # latency_ms is only written when it rounds to 1 ms or more: not its name either.
                "fields": sorted(f for f in h if "latency" not in f) if "latency" not in k
                else len(h)}
    return out


def test_one_script_leaves_redis_as_the_ordinary_path(core_config: FleetConfig) -> None:
    fast_r = fakeredis.FakeRedis(decode_responses=True)
    slow_r = fakeredis.FakeRedis(decode_responses=True)
    fast = Runner(core_config, fast_r, lambda d: None)
    slow = Runner(core_config, slow_r, lambda d: None)
    d = _rules_delivery("fin-1")
    out = fast.run(d)
    assert isinstance(out, Stored) and out.result.status is Status.SUCCEEDED
    slow._run_rules(d)  # no prefetched ledger hash: WATCH/MULTI and the save script
    assert _state(fast_r, core_config) == _state(slow_r, core_config)
    [rec] = fast.ledger.job_attempts("fin-1")
    assert fast_r.llen(Ledger(fast_r, core_config)._day_key(day_of(rec.ts))) == 1
    assert fast_r.xlen(keys.ledger_log(core_config)) == 1
    # Run again (a redelivery): the stored result answers, nothing is billed twice.
    again = fast.run(d)
    assert isinstance(again, Stored) and again.result.job_id == "fin-1"
    assert len(fast.ledger.job_attempts("fin-1")) == 1


def test_a_ledger_that_moved_since_it_was_read_takes_the_ordinary_path(
        core_config: FleetConfig) -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    runner = Runner(core_config, r, lambda d: None)
    d = _rules_delivery("fin-2", attempt=2)
    stale = {"1": '{"outcome": "fallback", "cost_usd": 0.0}'}  # what was "read": one record
    planned = runner.ledger.plan(Attempt(job_id="fin-2", attempt=2, workflow="w",
                                         kind="keyword_route", tier="rules", outcome="ok"), stale)
    assert planned is not None
    res = Result(job_id="fin-2", status=Status.SUCCEEDED, tier="rules")
    # The hash has no record at all, not the one read: the script writes nothing.
    assert finish.finish(runner._finish, core_config, planned, res) is None
    assert r.get(keys.result(core_config, "fin-2")) is None
    assert r.hlen(runner.ledger.job_key("fin-2")) == 0
    out = runner.run(d)  # the real run reads afresh and finishes
    assert isinstance(out, Stored) and out.result.status is Status.SUCCEEDED
    assert len(runner.ledger.job_attempts("fin-2")) == 1
