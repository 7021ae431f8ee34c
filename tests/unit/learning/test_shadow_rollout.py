"""A candidate in shadow: every job routed by the current policy, the candidate's decision
logged beside it (bounded, no prompt), its failures never reaching the dispatch path, and
leaving shadow refused when the candidate would raise the estimated cost per request."""

from __future__ import annotations

import shutil
from pathlib import Path

import fakeredis
import numpy as np
import pytest
import redis

from tierfleet import keys
from tierfleet.config import FleetConfig
from tierfleet.jobs import Job
from tierfleet.learning import FleetPolicy, fleet_policy
from tierfleet.policy.correction import LabelCorrection
from tierfleet.policy.models import CORRECTION_FILE, KIND_FILE, META_FILE, SMALL_OK_FILE, load_models
from tierfleet.policy.shadowlog import ShadowEntry, ShadowLog
from tierfleet.policy.versions import PolicyVersions, Rollout

SECRET = "zanzibar-merger-codeword"
PROMPTS = ["What is the capital of Peru?", "Translate 'apple' into French.",
           f"summarise this memo about {SECRET}: the quarterly numbers are up",
           "write a python function to reverse a list", "Is a carrot a fruit?"]


@pytest.fixture
def cfg(core_config: FleetConfig, tmp_path: Path) -> FleetConfig:
    core_config.learning.versions = True
    core_config.learning.versions_reload_s = 0.0
    core_config.learning.policy_dir = str(tmp_path / "policies")
    # Our own hardware at a price, so sending a job a tier up shows in the estimate.
    core_config.hosts["ollama"].cost_per_hour = 1.0
    core_config.hosts["ollama-gpu"].cost_per_hour = 20.0
    return core_config


def candidate(cfg: FleetConfig, *, pricey: bool = True) -> str:
    """A copy of the shipped models; ``pricey``: p_small_ok pushed to ~0, so it sends
    small jobs a tier up."""
    versions = PolicyVersions(cfg)
    version, folder = versions.new_folder()
    for name in (KIND_FILE, SMALL_OK_FILE, META_FILE):
        shutil.copyfile(versions.folder("shipped") / name, folder / name)
    if pricey:
        n = len(load_models(str(versions.folder("shipped"))).small_ok.vocab)
        LabelCorrection(np.array([1.0, 0.0, -8.0]), 0.0, n, np.zeros(n + 1, np.int64),
                        np.zeros(0, np.int64), np.zeros(0), np.zeros(0)).save(folder / CORRECTION_FILE)
    versions.write_manifest(version, {"version": version, "status": "candidate", "parent": "shipped",
                                      "evaluation": {"gate": "pass"}})
    return version


def jobs(n: int = len(PROMPTS)) -> list[Job]:
    return [Job(id=f"job-{i}", prompt=PROMPTS[i % len(PROMPTS)]) for i in range(n)]


def routes_of(policy: FleetPolicy, js: list[Job]) -> list[tuple[str, str | None, str | None]]:
    return [(r.tier, r.model, r.policy_version) for r in policy.route_many(js)]


def test_in_shadow_the_route_is_the_current_policys_and_both_decisions_are_logged(
        cfg: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    policy = fleet_policy(cfg, fake_redis)
    before = routes_of(policy, jobs())
    assert {v for *_, v in before} == {"shipped"}
    version = candidate(cfg)
    state = Rollout(fake_redis, cfg).start(version)
    assert (state["phase"], state["share"], state["candidate"]) == ("shadow", 0.0, version)
    assert routes_of(policy, jobs()) == before  # the batch path
    assert [(r.tier, r.model, r.policy_version) for r in map(policy.route, jobs())] == before
    log = ShadowLog(fake_redis, cfg)
    entries = log.entries(version)
    assert len(entries) == 2 * len(PROMPTS)
    assert [e.job_id for e in entries[:5]] == [j.id for j in jobs()]
    assert {(e.current, e.candidate) for e in entries} == {("shipped", version)}
    assert [(e.tier, e.model) for e in entries[:5]] == [(t, m) for t, m, _ in before]
    assert all(e.p_small_ok is not None and e.cand_p_small_ok is not None for e in entries)
    assert any(not e.agrees for e in entries)
    s = log.summary(version)
    assert s.decisions == 10 and s.pricier_tier >= 1 and s.cheaper_tier == 0
    assert s.agreement_rate == pytest.approx(s.agree / 10) and s.agreement_rate < 1
    assert s.cand_cost_usd > s.cost_usd > 0
    # No prompt word anywhere the log writes (nor anywhere in this Redis).
    for k in fake_redis.keys("*"):
        raw = fake_redis.dump(k) or b""
        assert SECRET.encode() not in raw and b"quarterly" not in raw, k


def test_the_log_is_capped_and_expires(cfg: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    cfg.learning.shadow_log_size = 7
    version = candidate(cfg)
    Rollout(fake_redis, cfg).start(version)
    policy = fleet_policy(cfg, fake_redis)
    policy.route_many(jobs(12))
    for j in jobs(3):
        policy.route(j)
    key = keys.policy_shadow_log(cfg, version)
    assert fake_redis.llen(key) == 7
    assert [e.job_id for e in ShadowLog(fake_redis, cfg).entries(version)][-3:] == [
        "job-0", "job-1", "job-2"]  # the newest kept
    assert 0 < fake_redis.ttl(key) <= cfg.learning.shadow_log_ttl_s


def test_a_broken_candidate_or_redis_error_never_breaks_routing(
        cfg: FleetConfig, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    policy = fleet_policy(cfg, fake_redis)
    before = routes_of(policy, jobs())
    broken = candidate(cfg)
    Rollout(fake_redis, cfg).start(broken)
    real = policy.picker.policy

    class Broken:
        def route_each(self, *_: object) -> list[object]:
            raise RuntimeError(f"candidate crashed on {SECRET[:4]}")

    # The candidate's policy raises (a corrupt model, a bug); the current one is fine.
    monkeypatch.setattr(policy.picker, "policy",
                        lambda v: Broken() if v == broken else real(v))
    assert routes_of(policy, jobs()) == before
    assert policy.route(jobs()[0]).policy_version == "shipped"
    assert ShadowLog(fake_redis, cfg).entries(broken) == []
    assert "shadow candidate" in caplog.text and SECRET not in caplog.text

    monkeypatch.setattr(policy.picker, "policy", real)

    def down(*_: object) -> None:
        raise redis.ConnectionError("redis went away")

    assert policy.shadow_log is not None
    monkeypatch.setattr(policy.shadow_log, "add", down)
    policy._warned_at = -1e18
    caplog.clear()
    assert routes_of(policy, jobs()) == before
    assert "redis went away" in caplog.text


def test_live_phases_route_the_candidates_share_and_log_nothing(
        cfg: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    version = candidate(cfg, pricey=False)
    rollout = Rollout(fake_redis, cfg)
    rollout.start(version)
    policy = fleet_policy(cfg, fake_redis)
    policy.route_many(jobs())
    assert rollout.shadow_guard() == []  # the same models: the same decisions, the same cost
    assert ShadowLog(fake_redis, cfg).summary(version).agreement_rate == 1.0
    state = rollout.advance()
    assert (state["phase"], state["share"]) == ("live", 0.05)
    n = fake_redis.llen(keys.policy_shadow_log(cfg, version))
    policy.route_many(jobs(40))
    assert fake_redis.llen(keys.policy_shadow_log(cfg, version)) == n
    assert [rollout.advance()["share"] for _ in range(2)] == [0.5, 1.0]
    done = rollout.advance()
    assert (done["current"], done["candidate"], done["phase"]) == (version, None, "")


def test_leaving_shadow_is_refused_when_the_candidate_would_cost_more(
        cfg: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    version = candidate(cfg)
    rollout = Rollout(fake_redis, cfg)
    rollout.start(version)
    fleet_policy(cfg, fake_redis).route_many(jobs())
    [alert] = rollout.shadow_guard()
    assert alert.name == "cost_per_request" and alert.value > cfg.ledger.alert_cost_increase
    with pytest.raises(ValueError, match="stays in shadow"):
        rollout.advance()
    assert rollout.state()["phase"] == "shadow"
    state = rollout.advance(force=True)  # an operator's override
    assert (state["phase"], state["share"]) == ("live", 0.05)
    assert PolicyVersions(cfg).manifest(version)["status"] == "rolling out"


def log_costs(fake_redis: fakeredis.FakeRedis, cfg: FleetConfig, version: str,
              pairs: list[tuple[float, float]]) -> None:
    ShadowLog(fake_redis, cfg).add([
        ShadowEntry(job_id=f"j{i}", ts=float(i), current="shipped", candidate=version, kind="chat",
                    tier="paid", model="gpt-5.5", cost_usd=now, cand_tier="paid",
                    cand_model="gpt-5.5", cand_cost_usd=then)
        for i, (now, then) in enumerate(pairs)])


@pytest.mark.parametrize(("rise", "refused"), [(0.25, True), (0.10, False)])
def test_the_shadow_guard_holds_the_configured_cost_threshold(
        cfg: FleetConfig, fake_redis: fakeredis.FakeRedis, rise: float, refused: bool) -> None:
    version = candidate(cfg, pricey=False)
    rollout = Rollout(fake_redis, cfg)
    rollout.start(version)
    log_costs(fake_redis, cfg, version, [(0.01, 0.01 * (1 + rise))] * 5)
    assert bool(rollout.shadow_guard()) is refused
    cfg.ledger.alert_cost_increase = 0.05
    assert rollout.shadow_guard()  # the config's threshold, not a constant


def test_too_few_decisions_or_no_shadow_stage(cfg: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    version = candidate(cfg, pricey=False)
    rollout = Rollout(fake_redis, cfg)
    rollout.start(version)
    log_costs(fake_redis, cfg, version, [(0.01, 0.1)] * 2)
    assert rollout.shadow_guard() == []  # two decisions say nothing
    rollout.rollback("next test")
    cfg.learning.shadow_stage = False
    state = rollout.start(version)
    assert (state["phase"], state["share"]) == ("live", 0.05)
    policy = fleet_policy(cfg, fake_redis)
    policy.route_many(jobs())
    assert policy.picker.shadow_candidate() is None
    assert len(ShadowLog(fake_redis, cfg).entries(version)) == 2  # only the hand-written ones
