"""Budgets: an atomic hold before a rented or paid call, spend with the record, and what a
job whose budget is full does (cheaper tier, park until reset, reject), in the worker and
in the dispatcher's policy."""

from __future__ import annotations

from datetime import UTC, datetime

import fakeredis
import pytest

from tierfleet.backends.stub import StubBackend
from tierfleet.budgets import BudgetBook, Hold, Refusal, period_end
from tierfleet.config import BudgetConfig, FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind, Route, Status
from tierfleet.policy import FleetState, build_policy
from tierfleet.policy.state import BudgetLeft
from tierfleet.runner import Moved, Parked, Runner, Stored

NOW = datetime(2026, 3, 31, 23, 0, tzinfo=UTC).timestamp()


def paid_delivery(workflow: str = "inbox", max_tokens: int = 1000, **job: object) -> Delivery:
    j = Job(prompt="Write release notes for 4.2.", kind=Kind.SUMMARY, workflow=workflow,
            max_tokens=max_tokens, **job)
    return Delivery(job=j, route=Route(tier="paid", kind=Kind.SUMMARY, tokens_in=100, fallbacks=[]))


def make_runner(config: FleetConfig, client: fakeredis.FakeRedis,
                published: list[Delivery]) -> tuple[Runner, dict[str, StubBackend]]:
    backends = {n: StubBackend(n, answers=["Release 4.2 adds budgets."]) for n in config.hosts}
    return Runner(config, client, published.append, backend_for=backends.__getitem__), backends


def test_scope_and_period_validation() -> None:
    with pytest.raises(ValueError, match="scope"):
        BudgetConfig(scope="team:x", limit_usd=1)
    assert BudgetConfig(scope="tag:nightly", limit_usd=1).period == "day"
    assert period_end("month", NOW) == datetime(2026, 4, 1, tzinfo=UTC).timestamp()
    assert period_end("day", NOW) == datetime(2026, 4, 1, tzinfo=UTC).timestamp()


def test_a_hold_is_all_or_none_and_a_dead_workers_hold_expires(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    core_config.budgets = {"fleet": BudgetConfig(limit_usd=1.0),
                           "inbox": BudgetConfig(scope="workflow:inbox", limit_usd=0.5, on_exhausted="park")}
    book = BudgetBook(fake_redis, core_config)
    job = paid_delivery().job
    first = book.reserve(job, 0.3, "a", hold_s=60, now=NOW)
    assert isinstance(first, Hold) and len(first.keys) == 2
    second = book.reserve(job, 0.3, "b", hold_s=60, now=NOW)
    assert isinstance(second, Refusal) and second.name == "inbox"
    assert "budget inbox (workflow:inbox, $0.5 per day) exhausted" in second.reason
    # The fleet budget took nothing for the refused call: all or none.
    other = paid_delivery(workflow="other").job
    assert isinstance(book.reserve(other, 0.7, "c", hold_s=60, now=NOW), Hold)
    assert isinstance(book.reserve(other, 0.01, "d", hold_s=60, now=NOW), Refusal)
    # The first holder died: after its deadline its hold no longer blocks anyone.
    assert isinstance(book.reserve(job, 0.3, "e", hold_s=60, now=NOW + 61), Hold)
    assert book.reserve(paid_delivery().job.model_copy(update={"workflow": "x"}), 9, "f", hold_s=1,
                        now=NOW + 10**7) is not None  # a new day: the fleet budget is fresh


def test_a_paid_call_spends_its_actual_cost_once_and_drops_its_hold(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    core_config.budgets = {"fleet": BudgetConfig(limit_usd=5.0)}
    runner, _ = make_runner(core_config, fake_redis, [])
    d = paid_delivery()
    out = runner.run(d)
    assert isinstance(out, Stored) and out.result.status is Status.SUCCEEDED
    runner.run(d)  # a redelivery: stored, neither run nor billed again
    [s] = runner.budgets.status()
    cost = sum(a.cost_usd for a in runner.ledger.job_attempts(d.job.id))
    assert cost > 0 and s.spent_usd == pytest.approx(cost) and s.held_usd == 0


def test_an_exhausted_cheaper_budget_moves_the_job_to_a_cheaper_allowed_tier(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    core_config.budgets = {"fleet": BudgetConfig(limit_usd=0.0001, on_exhausted="cheaper")}
    published: list[Delivery] = []
    runner, backends = make_runner(core_config, fake_redis, published)
    out = runner.run(paid_delivery())
    assert isinstance(out, Moved) and out.to == "runpod", out  # the strongest tier that costs less
    assert "budget fleet" in out.why and backends["openai"].requests == []


def test_an_exhausted_park_budget_parks_until_the_period_resets_without_counting_a_park(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    core_config.budgets = {"m": BudgetConfig(limit_usd=0, period="month", on_exhausted="park")}
    runner, backends = make_runner(core_config, fake_redis, [])
    out = runner.run(paid_delivery())
    assert isinstance(out, Parked)
    import time
    assert out.due == pytest.approx(period_end("month", time.time()))
    assert fake_redis.zscore(runner.parking.parked_index, out.result.job_id) == pytest.approx(out.due)
    [(_, back)] = runner.parking.due(now=out.due + 1)
    assert back.parks == 0 and backends["openai"].requests == []


def test_an_exhausted_reject_budget_fails_the_job_with_the_reason(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    core_config.budgets = {"free": BudgetConfig(scope="user_tier:free", limit_usd=0, on_exhausted="reject")}
    runner, backends = make_runner(core_config, fake_redis, [])
    out = runner.run(paid_delivery(user_tier="free"))
    assert isinstance(out, Stored) and out.result.status is Status.FAILED
    assert "budget free (user_tier:free" in (out.result.error or "") and "reject" in (out.result.error or "")
    assert backends["openai"].requests == []
    # Another user tier is not covered by it.
    assert runner.run(paid_delivery(user_tier="standard")).result.status is Status.SUCCEEDED


def test_runtime_set_overrides_the_config_and_alerts_fire_at_thresholds(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    core_config.budgets = {"fleet": BudgetConfig(limit_usd=100.0)}
    book = BudgetBook(fake_redis, core_config)
    book.set("fleet", limit_usd=1.0)
    book.set("nightly", scope="tag:nightly", limit_usd=2.0, period="month")
    assert book.effective()["fleet"].limit_usd == 1.0 and book.effective()["fleet"].scope == "fleet"
    hold = book.reserve(paid_delivery().job, 0.85, "x", hold_s=60)
    assert isinstance(hold, Hold)
    pipe = fake_redis.pipeline()
    book.spend(pipe, hold, 0.85)
    pipe.execute()
    book.release(hold)
    [(name, threshold, text)] = book.alerts()
    assert (name, threshold) == ("fleet", 0.8) and "85%" in text


def test_the_policy_routes_a_job_around_a_budget_it_cannot_afford(core_config: FleetConfig) -> None:
    policy = build_policy(core_config)
    job = Job(prompt="Write release notes for version 4.2 of the app.", kind=Kind.WRITING,
              max_tokens=2000)
    roomy = FleetState(budgets=(BudgetLeft("fleet", "fleet", 10.0, "cheaper"),))
    tight = FleetState(budgets=(BudgetLeft("fleet", "fleet", 0.0, "cheaper"),))
    assert policy.route(job, roomy).tier == "paid"
    r = policy.route(job, tight)
    assert r.tier != "paid" and "paid" not in r.fallbacks
    assert any(x.stage == "budget" and "budget fleet" in x.text for x in r.reasons), r.reasons
