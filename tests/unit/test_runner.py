"""The runner, one test per branch, in process: fakeredis, stub backends, a list as the queue.

Each test reads Given (the fleet and what its hosts answer) / When (one delivery) /
Then (the outcome, what was published, stored and billed)."""

from __future__ import annotations

import time
from typing import Any
from unittest.mock import ANY

import fakeredis
import pytest

from tierfleet import keys
from tierfleet.backends import (
    AuthError,
    BackendError,
    BadRequest,
    ContextTooLong,
    HostDown,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
)
from tierfleet.backends.stub import StubBackend
from tierfleet.config import FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind, Privacy, Route, Status
from tierfleet.runner import Duplicate, Moved, Parked, Runner, Stored

GOOD = "def sort(xs):\n    return sorted(xs)"
REFUSAL = "I'm sorry, but I can't help with that."
LOCAL = {"rules", "local-mac", "local-gpu"}


@pytest.fixture
def published() -> list[Delivery]:
    return []


@pytest.fixture
def runner(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis, published: list[Delivery],
           stub_backends: dict[str, StubBackend]) -> Runner:
    return Runner(core_config, fake_redis, published.append, backend_for=stub_backends.__getitem__)


def delivery(config: FleetConfig, tier: str = "local-gpu", kind: Kind = Kind.CODE, *,
             privacy: Privacy = Privacy.INTERNAL, fallbacks: list[str] | None = None,
             tokens_in: int = 50, prompt: str = "write a sort function", **extra: Any) -> Delivery:
    job = Job(prompt=prompt, kind=kind, privacy=privacy)
    route = Route(tier=tier, kind=kind, tokens_in=tokens_in,
                  fallbacks=config.tiers[tier].fallback if fallbacks is None else fallbacks)
    return Delivery(job=job, route=route, **extra)


def attempts(runner: Runner, job_id: str) -> list[tuple[int, str, str | None]]:
    return [(a.attempt, a.outcome, a.host) for a in runner.ledger.job_attempts(job_id)]


def test_a_host_down_moves_the_job_to_the_next_allowed_tier(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama-gpu"].script(HostDown("ollama-gpu", "connection refused"))
    d = delivery(core_config)

    outcome = runner.run(d)

    assert outcome == Moved(to="local-mac", why=ANY, delivery=ANY)
    assert "connection refused" in outcome.why
    [moved] = published
    assert moved == outcome.delivery
    assert (moved.tier, moved.trail, moved.attempt) == ("local-mac", ("local-gpu",), 2)
    assert moved.route.model == "qwen3:4b"
    assert moved.route.fallbacks == ["runpod", "paid"]  # the rest of the chain, minus where it went
    assert runner.results.get(d.job.id) is None  # the next delivery stores the result
    # The failed call is billed as a call (the host saw it), the move as a fallback.
    assert attempts(runner, d.job.id) == [(1, "host_error", "ollama-gpu"), (1, "fallback", None)]
    assert runner.breaker.view("ollama-gpu").failures == 1


@pytest.mark.parametrize("error", [
    HostDown("ollama-gpu", "connection refused"),
    QuotaExhausted("ollama-gpu", "insufficient_quota"),
])
def test_each_host_failure_falls_back_and_feeds_the_breaker(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig, error: BackendError,
) -> None:
    stub_backends["ollama-gpu"].script(error)

    outcome = runner.run(delivery(core_config))

    assert isinstance(outcome, Moved) and outcome.to == "local-mac"
    assert [p.tier for p in published] == ["local-mac"]
    view = runner.breaker.view("ollama-gpu")
    assert view.failures == 1
    # A spent quota will not come back in a minute: the breaker opens at once, for long.
    assert (view.state == "open") is isinstance(error, QuotaExhausted)


def test_a_rate_limit_within_budget_is_waited_out_on_the_same_host(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    gpu = stub_backends["ollama-gpu"].script(RateLimited("ollama-gpu", "busy", retry_after=0.0), GOOD)

    outcome = runner.run(delivery(core_config))

    assert isinstance(outcome, Stored) and outcome.result.status is Status.SUCCEEDED
    assert len(gpu.requests) == 2 and published == []


def test_context_too_long_skips_tiers_whose_window_is_no_larger(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    # local-gpu's host offers 32k; local-mac offers no more, runpod offers 128k.
    stub_backends["ollama-gpu"].script(ContextTooLong("ollama-gpu", "context_length_exceeded"))

    outcome = runner.run(delivery(core_config, tokens_in=30_000))

    assert isinstance(outcome, Moved) and outcome.to == "runpod"
    assert stub_backends["ollama"].requests == []
    assert runner.breaker.view("ollama-gpu").failures == 0  # the host is fine


@pytest.mark.parametrize("error", [
    BadRequest("ollama-gpu", "invalid 'messages'"),
    AuthError("ollama-gpu", "invalid api key"),
    ModelNotFound("ollama-gpu", "model 'qwen3-coder:30b' not found"),
    BackendError("ollama-gpu", "something no family describes"),
])
def test_a_request_error_fails_the_job_without_a_pointless_fallback(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig, error: BackendError,
) -> None:
    stub_backends["ollama-gpu"].script(error)
    d = delivery(core_config)

    outcome = runner.run(d)

    assert isinstance(outcome, Stored)
    assert outcome.result.status is Status.FAILED and error.message in (outcome.result.error or "")
    assert published == []
    assert attempts(runner, d.job.id) == [(1, "failed", "ollama-gpu")]
    assert runner.results.get(d.job.id) == outcome.result


def test_an_unhealthy_host_is_not_called(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama-gpu"].healthy = False

    outcome = runner.run(delivery(core_config))

    assert isinstance(outcome, Moved) and "health check failed" in outcome.why
    assert stub_backends["ollama-gpu"].requests == []


def test_a_prompt_larger_than_every_window_of_the_tier_moves_on_without_a_call(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    d = delivery(core_config, "local-mac", Kind.CHAT, fallbacks=["paid"], tokens_in=40_000)

    outcome = runner.run(d)

    assert isinstance(outcome, Moved) and outcome.to == "paid"
    assert "prompt larger than its window" in outcome.why
    assert stub_backends["ollama"].requests == []


def test_a_poor_answer_escalates_one_tier_up_once(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama-gpu"].script(REFUSAL)
    stub_backends["runpod"].script(REFUSAL)
    d = delivery(core_config)

    first = runner.run(d)

    assert isinstance(first, Moved) and first.to == "runpod" and "refused" in first.why
    [up] = published
    assert up.escalated and up.trail == ("local-gpu",) and up.attempt == 2

    # The stronger tier refuses too: that answer is kept, not escalated a second time.
    second = runner.run(up)

    assert isinstance(second, Stored) and second.result.status is Status.SUCCEEDED
    assert second.result.text == REFUSAL and second.result.trail == ["local-gpu", "runpod"]
    assert len(published) == 1
    assert attempts(runner, d.job.id) == [(1, "escalated", "ollama-gpu"), (2, "ok", "runpod")]
    # The result carries the job's whole bill: one started Runpod second, the local try free.
    assert second.result.cost_usd == pytest.approx(core_config.hosts["runpod"].cost_per_second)


def test_with_nowhere_to_go_the_job_parks_with_backoff_at_its_first_tier(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama"].script(HostDown("ollama", "refused"))
    # It came from local-gpu, and local-mac has no fallback of its own.
    came = delivery(core_config, fallbacks=[]).moved(
        Route(tier="local-mac", kind=Kind.CODE, model="qwen3:4b", tokens_in=50))
    backoff = core_config.reliability.park_backoff_s

    before = time.time()
    outcome = runner.run(came)
    after = time.time()

    assert isinstance(outcome, Parked) and published == []
    assert before + backoff[0] <= outcome.due <= after + backoff[0]
    assert outcome.result.status is Status.PARKED
    assert runner.results.get(came.job.id) == outcome.result
    [(job_id, parked)] = runner.parking.due(now=outcome.due)
    assert job_id == came.job.id
    # Re-entered at its first tier with that tier's model and the whole chain ahead of it.
    assert (parked.tier, parked.route.model, parked.trail) == ("local-gpu", "qwen3-coder:30b", ())
    assert (parked.parks, parked.attempt) == (1, 3)

    # Parked once before: the wait is the next step of the backoff.
    before = time.time()
    again = runner.run(delivery(core_config, "local-mac", Kind.CHAT, parks=1))
    after = time.time()
    assert isinstance(again, Parked)
    assert before + backoff[1] <= again.due <= after + backoff[1]


def test_a_job_parked_max_attempts_times_becomes_a_dead_letter(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama"].script(HostDown("ollama", "refused"))
    limit = core_config.reliability.max_attempts
    d = delivery(core_config, "local-mac", Kind.CHAT, parks=limit)

    outcome = runner.run(d)

    assert isinstance(outcome, Stored) and outcome.result.status is Status.DEAD
    assert published == [] and runner.parking.count() == 0
    [dead] = runner.parking.dead()
    assert dead == {"id": d.job.id, "delivery": d.to_kwargs(), "dead_at": ANY,
                    "reason": ANY}
    assert dead["reason"].startswith(f"gave up after {limit} parks")


def test_a_confidential_job_never_moves_off_our_own_hardware(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    # A hand-crafted route offers rented and paid tiers first; the worker must not follow it.
    stub_backends["ollama-gpu"].script(HostDown("ollama-gpu", "refused"))
    stub_backends["ollama"].script(HostDown("ollama", "refused"))
    d = delivery(core_config, privacy=Privacy.CONFIDENTIAL,
                 fallbacks=["runpod", "paid", "local-mac"])

    moved = runner.run(d)
    parked = runner.run(published[-1])

    assert isinstance(moved, Moved) and moved.to == "local-mac"
    assert isinstance(parked, Parked)
    assert {p.tier for p in published} <= LOCAL
    assert stub_backends["runpod"].requests == stub_backends["openai"].requests == []


def test_a_confidential_job_does_not_escalate_to_a_tier_it_may_not_use(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama-gpu"].script(REFUSAL)

    outcome = runner.run(delivery(core_config, privacy=Privacy.CONFIDENTIAL))

    assert isinstance(outcome, Stored) and outcome.result.text == REFUSAL
    assert published == []


def test_a_delivery_on_a_forbidden_tier_fails_without_a_call(
    runner: Runner, stub_backends: dict[str, StubBackend], core_config: FleetConfig,
) -> None:
    d = delivery(core_config, "paid", Kind.WRITING, privacy=Privacy.CONFIDENTIAL)

    outcome = runner.run(d)

    assert isinstance(outcome, Stored) and outcome.result.status is Status.FAILED
    assert outcome.result.error == "tier not allowed for this job"
    assert stub_backends["openai"].requests == []


def test_a_redelivery_is_stored_and_billed_once(
    runner: Runner, stub_backends: dict[str, StubBackend], core_config: FleetConfig,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    gpu = stub_backends["ollama-gpu"].script(GOOD)
    d = delivery(core_config)

    first = runner.run(d)
    # The worker died before the ack: the same delivery comes again.
    again = Runner(core_config, fake_redis, [].append, backend_for=stub_backends.__getitem__).run(d)

    assert isinstance(first, Stored) and first.result.status is Status.SUCCEEDED
    assert again == first
    assert len(gpu.requests) == 1
    assert attempts(runner, d.job.id) == [(1, "ok", "ollama-gpu")]
    counted = fake_redis.hgetall(keys.metrics(core_config, "jobs"))
    assert sum(int(v) for v in counted.values()) == 1


def test_a_redelivered_fallback_is_billed_once_and_not_run_again(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    gpu = stub_backends["ollama-gpu"].script(HostDown("ollama-gpu", "refused"))
    d = delivery(core_config)

    runner.run(d)
    # Redelivered before the ack: the job already moved on as attempt 2, so this copy
    # steps aside instead of calling the host again and publishing a second move.
    again = runner.run(d)

    assert isinstance(again, Duplicate) and "superseded" in again.why
    assert [p.tier for p in published] == ["local-mac"]
    assert len(gpu.requests) == 1
    assert sorted(attempts(runner, d.job.id), key=str) == [
        (1, "fallback", None), (1, "host_error", "ollama-gpu")]


def test_the_same_question_is_answered_from_the_cache(
    runner: Runner, stub_backends: dict[str, StubBackend], core_config: FleetConfig,
) -> None:
    gpu = stub_backends["ollama-gpu"].script(GOOD)
    runner.run(delivery(core_config))
    second = delivery(core_config)

    outcome = runner.run(second)

    assert isinstance(outcome, Stored) and outcome.result.cache_hit and outcome.result.text == GOOD
    assert len(gpu.requests) == 1
    assert attempts(runner, second.job.id) == [(1, "cached", "ollama-gpu")]


def test_a_rules_job_runs_its_executor_and_is_billed_at_nothing(
    runner: Runner, core_config: FleetConfig,
) -> None:
    job = Job(kind=Kind.KEYWORD_ROUTE, input={"text": "my VPN drops"})
    d = Delivery(job=job, route=Route(tier="rules", kind=Kind.KEYWORD_ROUTE))

    outcome = runner.run(d)

    assert isinstance(outcome, Stored) and outcome.result.status is Status.SUCCEEDED
    assert outcome.result.output is not None
    [att] = runner.ledger.job_attempts(job.id)
    assert (att.outcome, att.cost_usd) == ("ok", 0.0)


def test_a_crash_stores_a_failed_result(runner: Runner, core_config: FleetConfig) -> None:
    d = delivery(core_config)

    runner.crashed(d.to_kwargs(), RuntimeError("boom"))

    stored = runner.results.get(d.job.id)
    assert stored is not None and stored.status is Status.FAILED
    assert stored.error == "internal error: RuntimeError: boom"



def test_a_rate_limit_beyond_the_wait_budget_parks_the_job_for_its_retry_after(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama-gpu"].script(RateLimited("ollama-gpu", "slow down", retry_after=60.0))
    before = time.time()

    outcome = runner.run(delivery(core_config))

    assert isinstance(outcome, Parked) and before + 59 < outcome.due < time.time() + 61
    assert published == []
    assert runner.breaker.view("ollama-gpu").failures == 0  # a rate limit is no fault
    # Every worker's limiter now holds the host back until the Retry-After ends.
    assert runner.flow.acquire("ollama-gpu", "c", 10, hold_s=1) == pytest.approx(60, abs=1)


def test_a_rate_limit_beyond_the_jobs_latency_budget_moves_on_without_the_breaker(
    runner: Runner, published: list[Delivery], stub_backends: dict[str, StubBackend],
    core_config: FleetConfig,
) -> None:
    stub_backends["ollama-gpu"].script(RateLimited("ollama-gpu", "slow down", retry_after=60.0))
    d = delivery(core_config)
    d = d.model_copy(update={"job": d.job.model_copy(update={"latency_budget_s": 5.0})})

    outcome = runner.run(d)

    assert isinstance(outcome, Moved) and outcome.to == "local-mac"
    assert "rate limited" in outcome.why
    assert runner.breaker.view("ollama-gpu").failures == 0
