"""Labels from the fleet: escalations, feedback tied to the answering call, shadow tests,
privacy, the shadow budget, and the memory the dispatcher's policy reads."""

from __future__ import annotations

import time

import fakeredis
import pytest

from tierfleet.backends.stub import StubBackend
from tierfleet.config import FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind, Privacy, Route
from tierfleet.labels import LabelStore, NoAnswer, RedisMemoryStore, record_feedback
from tierfleet.learning import fleet_policy
from tierfleet.runner import Moved, Runner, Stored
from tierfleet.shadow import SHADOW_OF

REFUSAL = "I'm sorry, but I can't help with that."


@pytest.fixture
def published() -> list[Delivery]:
    return []


@pytest.fixture
def runner(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis, published: list[Delivery],
           stub_backends: dict[str, StubBackend]) -> Runner:
    return Runner(core_config, fake_redis, published.append, backend_for=stub_backends.__getitem__)


def on_mac(prompt: str = "classify this ticket: printer on fire", *, kind: Kind = Kind.CLASSIFICATION,
           privacy: Privacy = Privacy.INTERNAL, **meta: str) -> Delivery:
    job = Job(prompt=prompt, kind=kind, privacy=privacy, metadata=meta)
    return Delivery(job=job, route=Route(tier="local-mac", kind=kind, tokens_in=20, p_small_ok=0.8,
                                         fallbacks=["paid"], policy_version="shipped"))


def test_an_escalation_is_a_bad_small_label_and_feeds_the_memory(
        runner: Runner, stub_backends: dict[str, StubBackend], fake_redis: fakeredis.FakeRedis,
        core_config: FleetConfig) -> None:
    stub_backends["ollama"].script(REFUSAL)
    d = on_mac()
    out = runner.run(d)
    assert isinstance(out, Moved) and out.to != "local-mac"
    [label] = LabelStore(fake_redis, core_config).since()
    assert (label.source, label.tier, label.small_score, label.small_ok) == (
        "escalation", "local-mac", 0.0, 0.0)
    assert label.judge == "quality-check" and "refused" in (label.note or "")
    assert label.policy_version == "shipped" and label.features["tokens_in"] == 20
    [rec] = [a for a in runner.ledger.job_attempts(d.job.id) if a.outcome == "escalated"]
    assert label.call == rec.call and rec.policy_version == "shipped"
    assert len(RedisMemoryStore(fake_redis, core_config).load()) == 1
    runner.run(d)  # a redelivery of the same attempt writes no second label
    assert LabelStore(fake_redis, core_config).count() == 1


def test_feedback_is_tied_to_the_call_that_answered_and_bad_feedback_is_remembered(
        runner: Runner, stub_backends: dict[str, StubBackend], fake_redis: fakeredis.FakeRedis,
        core_config: FleetConfig) -> None:
    stub_backends["ollama"].script("billing")
    d = on_mac()
    assert isinstance(runner.run(d), Stored)
    label = record_feedback(fake_redis, core_config, d.job.id, good=False, note="wrong queue")
    [rec] = [a for a in runner.ledger.job_attempts(d.job.id) if a.outcome == "ok"]
    assert (label.call, label.attempt, label.tier, label.model) == (rec.call, 1, "local-mac", rec.model)
    assert label.small_ok == 0.0 and label.true_kind == "classification"
    assert "prompt" not in label.shown()  # operators never see the words
    record_feedback(fake_redis, core_config, d.job.id, score=0.9)  # the latest verdict wins
    [only] = LabelStore(fake_redis, core_config).since()
    assert only.small_score == 0.9 and only.small_ok == 1.0
    assert len(RedisMemoryStore(fake_redis, core_config).load()) == 1  # from the bad one
    with pytest.raises(NoAnswer):
        record_feedback(fake_redis, core_config, "never-ran", good=True)


def test_a_confidential_note_is_not_shown(runner: Runner, stub_backends: dict[str, StubBackend],
                                          fake_redis: fakeredis.FakeRedis, core_config: FleetConfig) -> None:
    stub_backends["ollama"].script("ok")
    d = on_mac(privacy=Privacy.CONFIDENTIAL)
    runner.run(d)
    label = record_feedback(fake_redis, core_config, d.job.id, good=False, note="patient Smith")
    assert label.shown()["note"] == "<confidential>" and "prompt" not in label.shown()


def test_a_shadow_sample_is_judged_against_the_strong_answer(
        runner: Runner, stub_backends: dict[str, StubBackend], fake_redis: fakeredis.FakeRedis,
        core_config: FleetConfig, published: list[Delivery]) -> None:
    core_config.learning.shadow.rate = 1.0
    stub_backends["ollama"].script("hardware")
    stub_backends["openai"].script("billing")
    d = on_mac(expected="billing")
    assert isinstance(runner.run(d), Stored)
    [shadow] = published
    assert shadow.tier == "paid" and shadow.job.metadata[SHADOW_OF] == d.job.id
    assert shadow.job.cache is False and shadow.route.fallbacks == []
    assert runner.results.get(d.job.id).text == "hardware"  # the producer's answer stands
    runner.run(shadow)
    [label] = LabelStore(fake_redis, core_config).since()
    assert (label.source, label.judge, label.small_score, label.large_score) == (
        "shadow", "deterministic", 0.0, 1.0)
    assert label.tier == "local-mac" and label.bad_small
    assert len(RedisMemoryStore(fake_redis, core_config).load()) == 1
    assert runner.learning.shadow.spent_today() > 0
    [paid] = runner.ledger.job_attempts(shadow.job.id)
    assert paid.cost_usd > 0  # the shadow call is on the bill like any call


def test_a_rubric_judge_scores_when_no_check_applies(
        runner: Runner, stub_backends: dict[str, StubBackend], fake_redis: fakeredis.FakeRedis,
        core_config: FleetConfig, published: list[Delivery]) -> None:
    core_config.learning.shadow.rate = 1.0
    stub_backends["ollama"].script("a poem")
    stub_backends["openai"].script("a better poem", '{"a": 9, "b": 9}')
    d = on_mac("write a haiku about rain", kind=Kind.WRITING)
    runner.run(d)
    runner.run(published[0])
    [label] = LabelStore(fake_redis, core_config).since()
    assert (label.judge, label.small_score, label.large_score, label.small_ok) == ("rubric", 0.9, 0.9, 1.0)


def test_no_shadow_for_a_confidential_job_outside_local_tiers_nor_over_budget(
        runner: Runner, stub_backends: dict[str, StubBackend], core_config: FleetConfig,
        published: list[Delivery]) -> None:
    core_config.learning.shadow.rate = 1.0
    stub_backends["ollama"].script("x")
    runner.run(on_mac(privacy=Privacy.CONFIDENTIAL))
    assert published == []
    core_config.learning.shadow.daily_budget_usd = 0.0
    runner.run(on_mac("another ticket"))
    assert published == []


def test_the_shadow_rate_is_per_workflow_or_kind(runner: Runner, core_config: FleetConfig) -> None:
    core_config.learning.shadow.rates = {"kind:code": 0.5, "workflow:support": 0.0}
    s = runner.learning.shadow
    assert s.rate_for(Job(prompt="x", kind=Kind.CODE)) == 0.5
    assert s.rate_for(Job(prompt="x", workflow="support", kind=Kind.CODE)) == 0.0
    assert s.rate_for(Job(prompt="x")) == 0.0


def test_the_dispatchers_policy_moves_a_prompt_like_a_bad_one_up(
        fake_redis: fakeredis.FakeRedis, core_config: FleetConfig) -> None:
    core_config.learning.memory = True
    job = Job(prompt="summarise the quarterly revenue report for the board", kind=Kind.SUMMARY)
    policy = fleet_policy(core_config, fake_redis)
    before = policy.route(job)
    assert before.policy_version == "shipped"
    RedisMemoryStore(fake_redis, core_config).add_bad(job.text(), before.tier, time.time(), "j1", "feedback")
    policy.memory.refresh(force=True)
    after = policy.route(job)
    assert after.tier != before.tier
    assert any(r.stage == "memory" for r in after.reasons)
