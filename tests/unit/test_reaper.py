"""The reaper's sweeps that need no broker connection: parked jobs due, and orphan detection."""

from __future__ import annotations

import time

import fakeredis
import pytest

from tierfleet import keys
from tierfleet.broker import make_celery
from tierfleet.config import FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.heartbeats import write_heartbeat
from tierfleet.jobs import Job, Kind, Route
from tierfleet.reaper import Reaper


@pytest.fixture
def reaper(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> Reaper:
    # The app is never connected here: unparking publishes through the callable it is given.
    return Reaper(core_config, fake_redis, make_celery(core_config))


def parked(reaper: Reaper, job_id: str, *, due_in: float) -> Delivery:
    d = Delivery(job=Job(id=job_id, prompt="hi", kind=Kind.CHAT),
                 route=Route(tier="local-mac", kind=Kind.CHAT), parks=1, attempt=2)
    reaper.parking.park(d, 0, "down")
    reaper.redis.zadd(reaper.parking.parked_index, {job_id: time.time() + due_in})
    return d


def test_due_jobs_are_republished_once_and_leave_the_parked_set(reaper: Reaper) -> None:
    due = parked(reaper, "due", due_in=-1)
    parked(reaper, "later", due_in=3600)
    sent: list[Delivery] = []

    assert reaper.unpark_due(sent.append) == 1
    assert reaper.unpark_due(sent.append) == 0

    assert sent == [due]  # exactly the parked delivery: its tier, trail, attempt and parks
    assert reaper.parking.count() == 1 and reaper.unparked_total == 1
    assert reaper.redis.hget(reaper.parking.parked_bodies, "due") is None


def test_a_job_another_reaper_took_is_not_republished(reaper: Reaper) -> None:
    parked(reaper, "due", due_in=-1)
    assert len(reaper.parking.take_due()) == 1  # the other reaper won
    sent: list[Delivery] = []
    assert reaper.unpark_due(sent.append) == 0 and sent == []


def test_orphans_are_old_deliveries_no_live_worker_claims(
    reaper: Reaper, core_config: FleetConfig, fake_redis: fakeredis.FakeRedis,
) -> None:
    now = time.time()
    grace = core_config.reliability.dead_after_s
    fake_redis.zadd(keys.UNACKED_INDEX, {"held": now - grace - 5, "lost": now - grace - 5,
                                         "young": now - 1})
    write_heartbeat(fake_redis, core_config, "gpu-1@box", ["local-gpu"], ["held"], 1)

    assert reaper.orphans(now) == ["lost"]


def test_tick_runs_only_under_the_fleet_wide_lock(
    reaper: Reaper, core_config: FleetConfig, fake_redis: fakeredis.FakeRedis,
) -> None:
    parked(reaper, "due", due_in=-1)
    fake_redis.set(keys.reaper_lock(core_config), "another process")

    assert reaper.tick() == (0, 0)
    assert reaper.parking.count() == 1
