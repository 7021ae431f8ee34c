"""``tierfleet feedback`` and ``tierfleet policy list|promote|shadow-report|rollback`` on fakeredis."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest
import typer
from typer.testing import CliRunner

from tierfleet import broker
from tierfleet.cli.learn import register
from tierfleet.config import FleetConfig, reset_config
from tierfleet.policy.versions import PolicyVersions, Rollout


@pytest.fixture
def cli(core_config: FleetConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fake_redis: fakeredis.FakeRedis) -> tuple[typer.Typer, FleetConfig]:
    core_config.learning.policy_dir = str(tmp_path / "policies")
    monkeypatch.setattr(broker, "redis_client", lambda cfg, url=None: fake_redis)
    monkeypatch.setattr("tierfleet.cli._common.get", lambda path: core_config)
    reset_config()
    app = typer.Typer()
    register(app)
    return app, core_config


def test_feedback_on_a_job_with_no_answer_is_a_clear_error(cli: tuple[typer.Typer, FleetConfig]) -> None:
    app, _ = cli
    res = CliRunner().invoke(app, ["feedback", "no-such-job", "--bad"])
    assert res.exit_code == 2
    assert "no-such-job" in res.output
    res = CliRunner().invoke(app, ["feedback", "no-such-job"])
    assert res.exit_code == 2 and "--good or --bad" in res.output


def test_a_candidate_is_promoted_in_stages_then_rolled_back(
        cli: tuple[typer.Typer, FleetConfig], fake_redis: fakeredis.FakeRedis) -> None:
    app, cfg = cli
    versions = PolicyVersions(cfg)
    version, _ = versions.new_folder()
    versions.write_manifest(version, {"version": version, "status": "candidate", "parent": "shipped",
                                      "evaluation": {"gate": "passed"}})
    run = CliRunner()
    shares = []
    res = run.invoke(app, ["policy", "promote", version])
    assert res.exit_code == 0, res.output
    assert "shadow: decisions logged, none acted on" in res.output
    st = Rollout(fake_redis, cfg).state()
    shares.append((st["phase"], st["share"]))
    res = run.invoke(app, ["policy", "promote"])  # out of shadow: what it did is shown
    assert res.exit_code == 0, res.output
    assert "shadow of " + version in res.output and "0 decisions" in res.output
    for _ in range(3):
        st = Rollout(fake_redis, cfg).state()
        shares.append((st["phase"], st["share"]))
        if st["share"] < 1.0:
            assert run.invoke(app, ["policy", "promote"]).exit_code == 0
    assert shares == [("shadow", 0.0), ("live", 0.05), ("live", 0.5), ("live", 1.0)]
    assert run.invoke(app, ["policy", "promote"]).exit_code == 0
    assert Rollout(fake_redis, cfg).state()["current"] == version
    listed = json.loads(run.invoke(app, ["policy", "list", "--json"]).output)
    assert listed["rollout"]["current"] == version
    assert {v["version"] for v in listed["versions"]} == {"shipped", version}
    res = run.invoke(app, ["policy", "rollback", "--reason", "quality dropped"])
    assert res.exit_code == 0, res.output
    assert Rollout(fake_redis, cfg).state()["current"] == "shipped"
    res = run.invoke(app, ["policy", "rollback"])
    assert res.exit_code == 2 and "nothing to roll back" in res.output


def test_a_refused_candidate_needs_force(cli: tuple[typer.Typer, FleetConfig]) -> None:
    app, cfg = cli
    versions = PolicyVersions(cfg)
    version, _ = versions.new_folder()
    versions.write_manifest(version, {"version": version, "status": "candidate",
                                      "evaluation": {"gate": "refused", "reasons": ["cut fell"]}})
    res = CliRunner().invoke(app, ["policy", "promote", version])
    assert res.exit_code == 2 and "cut fell" in res.output
    assert CliRunner().invoke(app, ["policy", "promote", version, "--force"]).exit_code == 0


def test_shadow_report_and_a_refused_exit_from_shadow(
        cli: tuple[typer.Typer, FleetConfig], fake_redis: fakeredis.FakeRedis) -> None:
    from tierfleet.policy.shadowlog import ShadowEntry, ShadowLog

    app, cfg = cli
    versions = PolicyVersions(cfg)
    version, _ = versions.new_folder()
    versions.write_manifest(version, {"version": version, "status": "candidate",
                                      "evaluation": {"gate": "passed"}})
    run = CliRunner()
    assert run.invoke(app, ["policy", "shadow-report"]).exit_code == 2  # nothing rolling out
    assert run.invoke(app, ["policy", "promote", version]).exit_code == 0
    # Four jobs: two agree; one the candidate sends from local-mac up to paid (25x the
    # cost), one from local-gpu down to local-mac.
    rows = [("local-mac", "local-mac", 0.001, 0.001), ("paid", "paid", 0.004, 0.004),
            ("local-mac", "paid", 0.001, 0.025), ("local-gpu", "local-mac", 0.002, 0.001)]
    ShadowLog(fake_redis, cfg).add([
        ShadowEntry(job_id=f"j{i}", ts=float(i), current="shipped", candidate=version, kind="chat",
                    tier=t, cand_tier=c, cost_usd=a, cand_cost_usd=b, p_small_ok=0.9,
                    cand_p_small_ok=0.2)
        for i, (t, c, a, b) in enumerate(rows)])
    res = run.invoke(app, ["policy", "shadow-report", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    sh = out["shadow"]
    assert (sh["decisions"], sh["agree"], sh["cheaper_tier"], sh["pricier_tier"]) == (4, 2, 1, 1)
    assert sh["agreement_rate"] == 0.5
    assert sh["cost_per_request"] == pytest.approx(0.002)
    assert sh["cand_cost_per_request"] == pytest.approx(0.031 / 4)
    assert out["alerts"] and "would rise" in out["alerts"][0]
    text = run.invoke(app, ["policy", "shadow-report"]).output
    assert "agreement 50.0%" in text and "1 job(s) to a cheaper tier and 1 to a pricier" in text
    assert "leaving shadow is refused" in text
    res = run.invoke(app, ["policy", "promote"])
    assert res.exit_code == 2 and "stays in shadow" in res.output
    assert Rollout(fake_redis, cfg).state()["phase"] == "shadow"
    res = run.invoke(app, ["policy", "promote", "--force"])
    assert res.exit_code == 0 and "share 5%" in res.output
    assert "candidate: -" in run.invoke(app, ["policy", "rollback"]).output
