"""The result store (first final answer wins) and parking (parked jobs, dead letters)."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from tierfleet import keys
from tierfleet.config import FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.errors import ResultTimeout
from tierfleet.jobs import Job, Kind, Result, Route, Status
from tierfleet.store import Parking, ResultStore


@pytest.fixture
def store(fake_redis: fakeredis.FakeRedis, core_config: FleetConfig) -> ResultStore:
    return ResultStore(fake_redis, core_config)


@pytest.fixture
def parking(fake_redis: fakeredis.FakeRedis, core_config: FleetConfig) -> Parking:
    return Parking(fake_redis, core_config)


def result(status: Status, job_id: str = "j1", **kw: object) -> Result:
    return Result(job_id=job_id, status=status, **kw)  # type: ignore[arg-type]


def a_delivery(job_id: str = "j1", **kw: object) -> Delivery:
    job = Job(id=job_id, prompt="hello", kind=Kind.CHAT)
    return Delivery(job=job, route=Route(tier="local-mac", kind=Kind.CHAT), **kw)  # type: ignore[arg-type]


def test_the_first_final_result_wins(store: ResultStore) -> None:
    first = result(Status.SUCCEEDED, text="first")
    assert store.save(first) is first
    late = store.save(result(Status.FAILED, error="a late duplicate"))
    assert late == first and store.get("j1") == first


@pytest.mark.parametrize("before", [Status.PENDING, Status.PARKED])
def test_a_final_result_replaces_one_that_is_not(store: ResultStore, before: Status) -> None:
    store.save(result(before))
    final = result(Status.DEAD, error="gave up")
    assert store.save(final) is final and store.get("j1") == final


def test_pending_never_overwrites(store: ResultStore) -> None:
    store.save(result(Status.SUCCEEDED))
    store.mark_pending("j1", "local-mac")
    store.mark_pending_many([("j1", "local-mac"), ("j2", "paid")])
    [one, two] = store.get_many(["j1", "j2"])
    assert one is not None and one.status is Status.SUCCEEDED
    assert two is not None and (two.status, two.tier) == (Status.PENDING, "paid")


def test_results_expire(store: ResultStore, fake_redis: fakeredis.FakeRedis,
                        core_config: FleetConfig) -> None:
    store.save(result(Status.SUCCEEDED))
    ttl = fake_redis.ttl(keys.result(core_config, "j1"))
    assert 0 < ttl <= core_config.reliability.result_expires_s


def test_wait_returns_final_results_in_the_order_asked(store: ResultStore) -> None:
    store.save(result(Status.SUCCEEDED, "a"))
    store.save(result(Status.PENDING, "b"))
    seen: list[tuple[int, int]] = []

    def finish_b(_: float) -> None:  # the "sleep": meanwhile a worker finishes b
        store.save(result(Status.FAILED, "b"))

    got = store.wait(["b", "a"], deadline=float("inf"), sleep=finish_b,
                     on_progress=lambda done, total: seen.append((done, total)))

    assert [(r.job_id, r.status) for r in got] == [("b", Status.FAILED), ("a", Status.SUCCEEDED)]
    assert seen == [(1, 2), (2, 2)]


def test_wait_without_a_deadline_looks_once(store: ResultStore) -> None:
    store.save(result(Status.SUCCEEDED, "a"))
    got = store.wait(["a", "unknown"], deadline=None)
    assert got[0].status is Status.SUCCEEDED
    assert got[1].status is Status.UNKNOWN and "resubmit" in (got[1].error or "")


def test_wait_raises_when_the_deadline_passes(store: ResultStore) -> None:
    store.save(result(Status.PENDING, "slow"))
    now = [0.0]

    def tick(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ResultTimeout, match="1 of 1 job"):
        store.wait(["slow"], deadline=1.0, clock=lambda: now[0], sleep=tick)
    assert now[0] >= 1.0


def test_forget_clears_even_a_final_result(store: ResultStore) -> None:
    store.save(result(Status.DEAD))
    store.forget("j1")
    assert store.get("j1") is None


def test_park_stores_the_delivery_beside_its_bookkeeping(
    parking: Parking, fake_redis: fakeredis.FakeRedis, core_config: FleetConfig,
) -> None:
    d = a_delivery(parks=1, attempt=3)
    before = time.time()
    due = parking.park(d, 0, "every tier down")

    assert due >= before + core_config.reliability.park_backoff_s[0]
    entry = json.loads(fake_redis.hget(parking.parked_bodies, "j1"))
    assert entry == {"delivery": d.to_kwargs(), "reason": "every tier down",
                     "parked_at": pytest.approx(before, abs=5)}
    assert parking.due(now=due - 0.001) == []
    assert parking.due(now=due) == [("j1", d)]
    [shown] = parking.parked()
    assert (shown["id"], shown["parks"], shown["reason"]) == ("j1", 1, "every tier down")


def test_backoff_steps_then_stays_at_the_last(parking: Parking, core_config: FleetConfig) -> None:
    steps = core_config.reliability.park_backoff_s
    assert [parking.backoff(i) for i in range(len(steps) + 2)] == [*steps, steps[-1], steps[-1]]


def test_only_one_sweeper_takes_a_parked_job(parking: Parking) -> None:
    d = a_delivery()
    due = parking.park(d, 0, "down")
    assert parking.take_due(now=due) == [d]
    assert parking.take_due(now=due) == []  # taken out with its body, atomically
    assert parking.count() == 0


def test_bury_moves_a_job_to_the_dead_letters_and_take_dead_gives_it_back(parking: Parking) -> None:
    d = a_delivery(parks=8)
    parking.park(d, 0, "down")
    parking.bury(d, "gave up")

    assert parking.count() == 0 and parking.dead_count() == 1
    [dead] = parking.dead()
    assert (dead["id"], dead["delivery"], dead["reason"]) == ("j1", d.to_kwargs(), "gave up")
    assert parking.take_dead("j1") == d
    assert parking.take_dead("j1") is None and parking.dead_count() == 0


def test_entries_written_before_the_envelope_are_still_read(
    parking: Parking, fake_redis: fakeredis.FakeRedis,
) -> None:
    # Before envelope.py the bookkeeping was mixed into the message; parked jobs survive an upgrade.
    d = a_delivery(parks=2)
    old = {**d.to_kwargs(), "reason": "down", "parked_at": 1.0}
    fake_redis.hset(parking.parked_bodies, "j1", json.dumps(old))
    fake_redis.zadd(parking.parked_index, {"j1": 1.0})

    assert parking.due(now=2.0) == [("j1", d)]
    assert parking.parked()[0]["reason"] == "down"
