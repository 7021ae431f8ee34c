"""Two CLI answers a script relies on, in process on fakeredis: ``tierfleet result`` for
an id Redis has no record of exits non-zero (the JSON still printed), and a ``--since``
period out of range is one line naming the option and its range, the same in every
command that takes one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from typer.testing import CliRunner

from tierfleet import broker
from tierfleet.cli import app as cli_app
from tierfleet.config import FleetConfig, reset_config
from tierfleet.dispatch import Dispatcher
from tierfleet.jobs import Result, Status
from tierfleet.store import ResultStore


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, core_config: FleetConfig,
          fake_redis: fakeredis.FakeRedis, tmp_path: Path) -> Dispatcher:
    # A period accepted by mistake would train: its policy lands in the test's folder.
    core_config.learning.policy_dir = str(tmp_path / "policies")
    # No app: nothing here submits, and a job's result is stored by hand.
    d = Dispatcher(core_config, client=fake_redis, app=object())  # type: ignore[arg-type]
    monkeypatch.setattr("tierfleet.cli.jobs._dispatcher", lambda _path: d)
    monkeypatch.setattr("tierfleet.cli._common.get", lambda _path: core_config)
    monkeypatch.setattr(broker, "redis_client", lambda *_a, **_k: fake_redis)
    monkeypatch.setattr("tierfleet.cli.money.redis_client", lambda *_a, **_k: fake_redis)
    reset_config()
    return d


def run(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args), catch_exceptions=False)


def test_result_of_an_unknown_id_exits_1_and_says_why(wired: Dispatcher) -> None:
    got = run("result", "no-such-job")
    assert got.exit_code == 1
    shown = json.loads(got.stdout)  # the JSON is still printed, whole, on stdout
    assert shown["status"] == "unknown" and shown["job_id"] == "no-such-job"
    assert "no-such-job" in got.stderr and "no record of this job" in got.stderr
    assert "resubmit" in got.stderr


def test_result_of_a_known_job_exits_0(wired: Dispatcher) -> None:
    ResultStore(wired.redis, wired.config).save(
        Result(job_id="j1", status=Status.SUCCEEDED, kind="dedupe", output=["a"], tier="rules",
               trail=["rules"]))
    got = run("result", "j1")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["status"] == "succeeded" and got.stderr == ""


@pytest.mark.parametrize("command", [["report"], ["train-fleet"], ["train", "--from-fleet"]])
@pytest.mark.parametrize("since", ["99999999d", "99999999999999999999999999999999w", "3651d",
                                   "0d", "-1d", "soon"])
def test_a_period_out_of_range_is_one_line_naming_the_option(
    wired: Dispatcher, command: list[str], since: str
) -> None:
    # 99999999d was "year -271764 is out of range", and 1e32 weeks a traceback.
    got = run(*command, "--since", since)
    assert got.exit_code == 2, got.output
    line = got.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: --since:") and "at most 3650d" in line and repr(since) in line
    assert got.stdout == ""


def test_the_longest_period_is_accepted(wired: Dispatcher) -> None:
    got = run("report", "--since", "3650d", "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["since"] == "3650d"
