"""``tierfleet feedback`` and ``tierfleet policy list|promote|rollback`` on fakeredis."""

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
    shares.append(Rollout(fake_redis, cfg).state()["share"])
    for _ in range(2):
        assert run.invoke(app, ["policy", "promote"]).exit_code == 0
        shares.append(Rollout(fake_redis, cfg).state()["share"])
    assert shares == [0.05, 0.5, 1.0]
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
