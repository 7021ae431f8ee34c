"""A worker missing its host's key refuses to start; a host refusing a worker's key
never trips the breaker every worker shares, and the job does not move to paid."""

from __future__ import annotations

import fakeredis
import pytest

from tierfleet.backends.base import HostHealth
from tierfleet.backends.stub import StubBackend
from tierfleet.config import FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind, Route
from tierfleet.preflight import host_problems
from tierfleet.runner import Parked, Runner


def test_a_missing_key_is_named_with_its_host_and_variable(
        core_config: FleetConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("TIERFLEET_SECRETS_DIR", raising=False)
    [problem] = host_problems(core_config, ["runpod"])
    assert "host runpod" in problem and "RUNPOD_API_KEY" in problem
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_x")
    assert host_problems(core_config, ["runpod"]) == []
    assert host_problems(core_config, ["local-mac", "rules"]) == []  # no key needed there


def test_a_bad_url_is_a_problem(core_config: FleetConfig) -> None:
    core_config.hosts["ollama"].url = "localhost:11434"
    assert any("not an http(s) URL" in p for p in host_problems(core_config, ["local-mac"]))


class _Refused(StubBackend):
    def health(self) -> HostHealth:
        self.health_checks += 1
        return HostHealth(host=self.name, ok=False, detail="401 invalid key", local_fault=True)


def test_a_host_refusing_this_workers_key_parks_the_job_and_leaves_the_breaker_closed(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    backends = {name: StubBackend(name) for name in core_config.hosts}
    backends["runpod"] = _Refused("runpod")
    published: list[Delivery] = []
    runner = Runner(core_config, fake_redis, published.append, backend_for=backends.__getitem__)
    job = Job(prompt="write a parser", kind=Kind.CODE)
    d = Delivery(job=job, route=Route(tier="runpod", kind=Kind.CODE, tokens_in=20, fallbacks=["paid"]))

    outcome = runner.run(d)

    assert isinstance(outcome, Parked), outcome
    assert "refused this worker's key" in (outcome.result.error or "")
    assert published == []  # nothing went to paid
    assert backends["openai"].requests == []
    view = runner.breaker.view("runpod")
    assert (view.state, view.failures) == ("closed", 0)
