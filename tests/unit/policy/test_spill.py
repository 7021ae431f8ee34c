"""Spending a little to save waiting: fleet default budgets, a batch's own queue, P:svc."""

from __future__ import annotations

import fakeredis

from tests.unit.policy.test_stages import CODE_JOB, fleet
from tierfleet import keys, metrics
from tierfleet.jobs import Attempt, Job
from tierfleet.policy import FleetState, Policy

STATE = FleetState(live_workers={"local-gpu": 1, "runpod": 1, "paid": 4},
                   service_time_s={"local-gpu": 10.0, "runpod": 10.0, "paid": 2.0})


def test_a_kind_default_budget_spills_a_job_that_sets_none() -> None:
    cfg = fleet()
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(
        update={"latency_budgets_s": {"code": 15.0}})})
    busy = FleetState(queue_depth={"local-gpu": 2}, live_workers=STATE.live_workers,
                      service_time_s=STATE.service_time_s)
    assert Policy(cfg).route(Job(prompt=CODE_JOB), busy).tier == "runpod"
    assert Policy(fleet()).route(Job(prompt=CODE_JOB), busy).tier == "local-gpu"  # no default


def test_a_batch_counts_its_own_jobs_into_the_queue_ahead() -> None:
    jobs = [Job(prompt=CODE_JOB, latency_budget_s=15.0) for _ in range(4)]
    tiers = [r.tier for r in Policy(fleet()).route_many(jobs, STATE)]
    # 0 s and 10 s ahead on the GPU fit the budget; the third would wait 20 s.
    assert tiers[:2] == ["local-gpu", "local-gpu"]
    assert tiers[2:] == ["runpod", "runpod"]


def test_workers_keep_a_moving_mean_service_time_per_tier() -> None:
    cfg = fleet()
    r = fakeredis.FakeRedis(decode_responses=True)
    for seconds in (10.0, 10.0, 4.0):
        pipe = r.pipeline()
        metrics.add_attempt(pipe, cfg, Attempt(job_id="j", attempt=1, workflow="w", kind="code",
                                               tier="local-gpu", model="coder:30b", latency_s=seconds,
                                               outcome="ok"))
        pipe.execute()
    mean = float(r.hget(keys.service_times(cfg), "local-gpu") or 0)
    assert abs(mean - (10.0 + metrics.SERVICE_TIME_ALPHA * (4.0 - 10.0))) < 1e-6
