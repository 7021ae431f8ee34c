"""Fault test: 4 workers race for the last $1 of a budget on one real redis-server."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from tierfleet.backends.base import Completion, CompletionRequest
from tierfleet.backends.stub import StubBackend
from tierfleet.budgets import BudgetBook
from tierfleet.config import BudgetConfig, FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.fleet import FleetView
from tierfleet.jobs import Job, Kind, Route, Status
from tierfleet.runner import Runner, Stored

pytestmark = pytest.mark.integration

MAX_TOKENS = 2000
TOKENS_IN = 100


class Provider(StubBackend):
    """A paid host that takes a moment and bills a bit more input than we counted (another
    tokenizer) and at most the output allowance: the real shape of an estimate's error."""

    def __init__(self, name: str, seed: int) -> None:
        super().__init__(name)
        self.rng = random.Random(seed)
        self.billed: list[tuple[int, int]] = []

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        time.sleep(self.rng.uniform(0.001, 0.01))  # overlap the workers' calls
        tin, tout = TOKENS_IN + self.rng.randint(0, 40), self.rng.randint(MAX_TOKENS // 2, MAX_TOKENS)
        self.billed.append((tin, tout))
        return Completion(text="notes", model=request.model, host=self.name, tokens_in=tin,
                          tokens_out=tout, latency_s=0.005)


def test_four_workers_racing_for_the_last_dollar_overspend_by_at_most_one_estimate_error(
        core_config: FleetConfig, redis_url: str) -> None:
    limit = 1.0
    core_config.budgets = {"fleet": BudgetConfig(limit_usd=limit, on_exhausted="reject")}
    jobs = [Job(id=f"race-{i}", prompt=f"Write release notes for {i}.", kind=Kind.SUMMARY,
                max_tokens=MAX_TOKENS, cache=False)
            for i in range(80)]
    todo = list(jobs)
    lock = threading.Lock()
    outcomes: dict[str, Stored] = {}
    providers: list[Provider] = []

    def worker(seed: int) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        provider = Provider("openai", seed)
        providers.append(provider)
        backends = {n: StubBackend(n) for n in core_config.hosts} | {"openai": provider}
        runner = Runner(core_config, client, lambda d: None, backend_for=backends.__getitem__)
        while True:
            with lock:
                if not todo:
                    return
                job = todo.pop()
            d = Delivery(job=job, route=Route(tier="paid", kind=Kind.SUMMARY, tokens_in=TOKENS_IN,
                                              fallbacks=[]))
            out = runner.run(d)
            assert isinstance(out, Stored)
            outcomes[job.id] = out

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    [status] = BudgetBook(client, core_config).status()
    model = core_config.tiers["paid"].models["default"]
    estimate = FleetView(core_config).cost("paid", model, TOKENS_IN, MAX_TOKENS)
    prices = core_config.models[model]
    billed = [(tin * prices.input_per_mtok + tout * prices.output_per_mtok) / 1e6
              for p in providers for tin, tout in p.billed]
    worst_error = max(max(b - estimate for b in billed), 0.0)
    ok = [o for o in outcomes.values() if o.result.status is Status.SUCCEEDED]
    refused = [o for o in outcomes.values() if o.result.status is Status.FAILED]

    assert len(outcomes) == len(jobs)
    assert status.spent_usd == pytest.approx(sum(billed))  # every billed call counted, once
    assert status.held_usd == 0  # every hold released
    assert status.spent_usd <= limit + worst_error, (status, worst_error)
    assert len(ok) == len(billed) and refused  # the budget stopped the rest before any call
    assert all("budget fleet" in (o.result.error or "") for o in refused)
    # And it let through as much as fitted: a refused job found no room for one estimate.
    assert status.spent_usd > limit - 2 * estimate
