"""The shared circuit breaker: closed -> open -> half-open (one probe) -> closed or open."""

from __future__ import annotations

import time

import fakeredis
import pytest

from tests.support.fleets import rules_only
from tierfleet.config import FleetConfig
from tierfleet.health import Breaker, HealthChecker


def _config(**reliability: float) -> FleetConfig:
    import tomllib

    data = tomllib.loads(rules_only())
    data["reliability"] = {"breaker_failures": 2, "breaker_open_s": 0.3, "health_cache_s": 0.2,
                           **reliability}
    return FleetConfig(**data)


@pytest.fixture
def breaker() -> Breaker:
    return Breaker(fakeredis.FakeRedis(decode_responses=True), _config())


def test_opens_at_the_threshold_and_is_shared(breaker: Breaker) -> None:
    assert breaker.allow("mac")
    breaker.failure("mac", "refused")
    assert breaker.view("mac").state == "closed" and breaker.allow("mac")
    breaker.failure("mac", "refused")
    assert breaker.view("mac").state == "open" and not breaker.allow("mac")
    other_process = Breaker(breaker.redis, breaker.config)  # same Redis, another worker
    assert not other_process.allow("mac")
    assert "mac" in other_process.open_hosts()
    assert breaker.times_opened("mac") == 1


def test_half_open_lets_exactly_one_probe_through(breaker: Breaker) -> None:
    breaker.failure("mac", "x", hard_s=0.2)
    time.sleep(0.25)
    assert breaker.view("mac").state == "half-open"
    assert breaker.allow("mac")  # the probe
    assert not breaker.allow("mac")  # everyone else waits for its verdict
    breaker.success("mac")
    assert breaker.view("mac").state == "closed" and breaker.allow("mac")


def test_failed_probe_opens_again(breaker: Breaker) -> None:
    breaker.failure("mac", "x", hard_s=0.2)
    time.sleep(0.25)
    assert breaker.allow("mac")
    breaker.failure("mac", "still down")
    assert breaker.view("mac").state == "open"
    assert breaker.times_opened("mac") == 2


def test_health_is_cached_and_a_failed_probe_feeds_the_breaker() -> None:
    from tests.support.sim_fixtures import sim_hosts
    from tierfleet.backends import make_backend

    with sim_hosts() as sim:
        cfg = sim.config.model_copy(update={"reliability": _config().reliability})
        breaker = Breaker(fakeredis.FakeRedis(decode_responses=True), cfg)
        checker = HealthChecker(breaker, lambda h: make_backend(h, cfg.hosts[h]), cfg)
        assert checker.available("sim-ollama")[0] and checker.available("sim-ollama")[0]
        assert sim.counters("sim-ollama").get("tags", 0) == 1  # cached for health_cache_s
        sim.down("sim-ollama")
        time.sleep(0.25)
        ok, why = checker.available("sim-ollama")
        assert not ok and "refused" in why.lower()
        assert breaker.view("sim-ollama").failures == 1


def test_watchdog_fires_only_when_jobs_wait_and_the_node_holds_none() -> None:
    from tierfleet.heartbeats import Watchdog

    w = Watchdog(10.0)
    assert not w.stalled(waiting=5, held=0, done=3, now=0.0)
    assert not w.stalled(waiting=5, held=1, done=3, now=5.0)  # busy: the clock restarts
    assert not w.stalled(waiting=5, held=0, done=3, now=6.0)
    assert not w.stalled(waiting=5, held=0, done=3, now=15.0)
    assert w.stalled(waiting=5, held=0, done=3, now=16.0)
    assert not w.stalled(waiting=5, held=0, done=4, now=17.0)  # it finished a task
    assert not w.stalled(waiting=0, held=0, done=4, now=100.0)  # nothing to do is not a stall
    assert not Watchdog(0).stalled(waiting=5, held=0, now=1e9)  # off
