"""The dispatcher in process: fakeredis for state, a capturing stand-in for the Celery app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import pytest

from tierfleet.config import FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.envelope import Delivery
from tierfleet.errors import JobRejected
from tierfleet.heartbeats import write_heartbeat
from tierfleet.jobs import Job, Kind, Privacy, Result, Status


class CapturingApp:
    """What ``broker.send`` needs of a Celery app: ``send_task`` and a producer batch."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.batches = 0

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append({"name": name, **options})

    @contextmanager
    def producer_or_acquire(self) -> Iterator[Any]:
        app = self

        class Producer:
            @contextmanager
            def batch(self) -> Iterator[None]:
                app.batches += 1
                yield

        yield Producer()

    def deliveries(self) -> list[Delivery]:
        return [Delivery.from_kwargs(s["kwargs"]) for s in self.sent]


@pytest.fixture
def app() -> CapturingApp:
    return CapturingApp()


@pytest.fixture
def dispatcher(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis,
               app: CapturingApp) -> Dispatcher:
    return Dispatcher(core_config, client=fake_redis, app=app)  # type: ignore[arg-type]


def test_submit_publishes_a_delivery_with_the_route(dispatcher: Dispatcher, app: CapturingApp) -> None:
    handle = dispatcher.submit({"prompt": "write a python function that parses dates",
                                "kind": "code"})

    [sent] = app.sent
    [d] = app.deliveries()
    assert sent["name"] == "tierfleet.run_job"
    assert (sent["queue"], sent["task_id"]) == (handle.route.tier, handle.id)
    assert d.route == handle.route and d.job.id == handle.id
    assert (d.trail, d.attempt, d.parks, d.escalated) == ((), 1, 0, False)
    # Wire-compatible with workers that predate the envelope: the same five keys.
    assert set(sent["kwargs"]) == {"job", "route", "trail", "attempt", "parks"}
    pending = dispatcher.results.get(handle.id)
    assert pending is not None and (pending.status, pending.tier) == (Status.PENDING, handle.route.tier)


def test_a_confidential_job_is_redacted_in_what_flower_shows(dispatcher: Dispatcher,
                                                             app: CapturingApp) -> None:
    dispatcher.submit({"prompt": "the merger terms are X", "privacy": "confidential"})

    [sent] = app.sent
    shown = json.loads(sent["kwargsrepr"])  # what Flower shows: bookkeeping, never words
    assert "merger" not in sent["kwargsrepr"] and shown["privacy"] == "confidential"
    assert sent["shadow"] == f"{shown['kind']}@{shown['tier']}"
    assert sent["kwargs"]["job"]["prompt"] == "the merger terms are X"  # the worker still gets it
    assert app.deliveries()[0].route.tier in {"local-mac", "local-gpu"}


def test_submit_many_routes_all_then_publishes_one_batch(dispatcher: Dispatcher,
                                                         app: CapturingApp) -> None:
    handles = dispatcher.submit_many([{"prompt": f"summarise note {i}", "kind": "summary"}
                                      for i in range(3)])

    assert app.batches == 1
    assert [(d.job.id, d.route) for d in app.deliveries()] == [(h.id, h.route) for h in handles]


def test_a_bad_job_rejects_the_batch_before_anything_is_sent(dispatcher: Dispatcher,
                                                             app: CapturingApp) -> None:
    with pytest.raises(JobRejected, match=r"\[1\]\.prompt"):
        dispatcher.submit_many([{"prompt": "fine"}, {"prompt": "   "}])
    assert app.sent == []


def test_fleet_state_counts_queues_and_live_workers(
    dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis, core_config: FleetConfig,
) -> None:
    fake_redis.rpush("local-gpu", "a", "b")
    write_heartbeat(fake_redis, core_config, "gpu-1@box", ["local-gpu"], [], 2)

    state = dispatcher.fleet_state()

    assert state.queue_depth["local-gpu"] == 2 and state.live_workers == {"local-gpu": 2}


def test_results_for_waits_on_the_store(dispatcher: Dispatcher) -> None:
    dispatcher.results.save(Result(job_id="done", status=Status.SUCCEEDED, kind=Kind.CHAT.value))
    [done, unknown] = dispatcher.results_for(["done", "nope"])
    assert done.ok and unknown.status is Status.UNKNOWN  # no record: say so, do not wait


def test_the_route_keeps_privacy_for_every_fallback(dispatcher: Dispatcher) -> None:
    route = dispatcher.route(Job(prompt="refactor this module", kind=Kind.CODE,
                                 privacy=Privacy.CONFIDENTIAL))
    assert route.tier in {"local-mac", "local-gpu"}
    assert set(route.fallbacks) <= {"local-mac", "local-gpu"}


def test_the_cached_fleet_state_keeps_the_budgets_after_a_submit(
    dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis, core_config: FleetConfig,
) -> None:
    """Counting a published job into the cached queue depths used to rebuild the state
    without its budgets: for the rest of the second the budget stage saw none."""
    from tierfleet.budgets import BudgetBook

    BudgetBook(fake_redis, core_config).set("fleet-cap", limit_usd=5.0, scope="fleet")
    assert [b.name for b in dispatcher.fleet_state().budgets] == ["fleet-cap"]
    dispatcher.submit({"prompt": "say hello", "kind": "chat"})
    state = dispatcher.fleet_state()  # the cached one, with the job counted in
    assert sum(state.queue_depth.values()) == 1
    assert [b.name for b in state.budgets] == ["fleet-cap"]


def test_a_nan_timeout_is_refused_not_waited_on_for_ever(dispatcher: Dispatcher) -> None:
    """A NaN deadline is never passed: the wait on a pending job polled Redis for ever."""
    handle = dispatcher.submit({"prompt": "say hello", "kind": "chat"})
    with pytest.raises(ValueError, match="NaN"):
        dispatcher.result(handle.id, timeout=float("nan"))
