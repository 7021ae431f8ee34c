"""FleetView: the one answer to "where can this job go", for the policy and the worker alike."""

from __future__ import annotations

import re
from pathlib import Path

import fakeredis
import pytest

from tests.conftest import BUILTIN_CONFIG
from tierfleet.backends.stub import StubBackend
from tierfleet.config import FleetConfig, load_config
from tierfleet.envelope import Delivery
from tierfleet.fleet import FleetView
from tierfleet.jobs import Job, Kind, Privacy, Route
from tierfleet.policy import build_policy
from tierfleet.runner import Moved, Runner

PROMPTS = [
    ("write a python function that merges two sorted lists", Kind.AUTO),
    ("summarise this paragraph about the quarterly budget in two lines", Kind.AUTO),
    ("prove that the square root of two is irrational, step by step", Kind.AUTO),
    ("draft a warm launch announcement for our new product", Kind.WRITING),
    ("hi there", Kind.CHAT),
]


def reversed_tiers(tmp_path: Path) -> Path:
    """The built-in config file with its ``[tiers.*]`` tables written in the opposite order."""
    blocks = re.split(r"(?m)^(?=\[)", BUILTIN_CONFIG.read_text())
    tiers = [b for b in blocks if b.startswith("[tiers.")]
    others = [b for b in blocks if not b.startswith("[tiers.")]
    path = tmp_path / "reordered.toml"
    path.write_text("".join(others[:1] + tiers[::-1] + others[1:]))
    return path


@pytest.fixture
def reordered(tmp_path: Path, core_config: FleetConfig) -> FleetConfig:
    cfg = load_config(reversed_tiers(tmp_path))
    cfg.ledger.dir = core_config.ledger.dir
    return cfg


def test_the_ladder_follows_the_policy_not_the_file(core_config: FleetConfig,
                                                     reordered: FleetConfig) -> None:
    assert list(reordered.tiers) == list(core_config.tiers)[::-1]  # the file really changed
    for cfg in (core_config, reordered):
        view = FleetView(cfg)
        assert view.ladder == ["local-mac", "local-gpu", "runpod", "paid"]
        assert view.above("local-gpu") == ["runpod", "paid"]
        assert view.above("paid") == [] and view.above("rules") == []


def test_reordering_tiers_changes_neither_routing_nor_escalation(core_config: FleetConfig,
                                                                 reordered: FleetConfig) -> None:
    # Routing: the policy sends every job where it sent it before.
    before, after = build_policy(core_config), build_policy(reordered)
    for prompt, kind in PROMPTS:
        job = Job(id="same", prompt=prompt, kind=kind)
        a, b = before.route(job), after.route(job)
        assert (a.tier, a.model, a.fallbacks) == (b.tier, b.model, b.fallbacks), prompt

    # Escalation: a poor answer on local-gpu goes one step up the policy's ladder, as before.
    for cfg in (core_config, reordered):
        stubs = {h: StubBackend(h, answers=["I'm sorry, but I can't help with that."])
                 for h in cfg.hosts}
        published: list[Delivery] = []
        runner = Runner(cfg, fakeredis.FakeRedis(decode_responses=True), published.append,
                        backend_for=stubs.__getitem__)
        job = Job(prompt="write a parser", kind=Kind.CODE)
        outcome = runner.run(Delivery(job=job, route=Route(tier="local-gpu", kind=Kind.CODE)))
        assert isinstance(outcome, Moved) and outcome.to == "runpod"
        assert outcome.to == after.fleet.above("local-gpu")[0]


def test_hosts_windows_and_vision(core_config: FleetConfig) -> None:
    view = FleetView(core_config)
    assert [h.name for h in view.hosts("local-gpu", "deepseek-r1:8b")] == ["ollama-gpu"]
    assert view.window("runpod", "qwen3-coder:30b") == 131072
    assert view.largest_window("paid") == 400_000
    assert view.is_vision("local-gpu") and not view.is_vision("local-mac")
    assert view.tiers_serving("qwen3-coder:30b") == ["local-gpu", "runpod"]
    assert view.model_on("runpod", "code", wanted="gpt-5.5") == "qwen3-coder:30b"  # not served there
    assert view.model_on("paid", "code", wanted="gpt-5.5") == "gpt-5.5"


def test_allowed_next_keeps_order_and_drops_what_the_job_may_not_use(core_config: FleetConfig) -> None:
    view = FleetView(core_config)
    chain = ["rules", "runpod", "local-mac", "paid", "local-gpu", "nowhere"]
    assert view.allowed_next(chain, Privacy.INTERNAL.value, "code", exclude={"local-gpu"}) == [
        "runpod", "local-mac", "paid"]
    assert view.allowed_next(chain, Privacy.CONFIDENTIAL.value, "code") == ["local-mac", "local-gpu"]
    assert view.allowed_next(chain, Privacy.INTERNAL.value, "vision") == ["local-gpu"]


def test_of_builds_one_view_per_config(core_config: FleetConfig) -> None:
    assert FleetView.of(core_config) is FleetView.of(core_config)
    assert FleetView.of(core_config.model_copy()) is not FleetView.of(core_config)
