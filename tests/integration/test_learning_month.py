"""A simulated month of the learning loop, in process (fakeredis, scripted hosts).

Slow (about 40 s), so it lives beside the integration tests and the unit run stays fast.

Traffic carries a hidden "true" small-ok label per prompt: from a small synthetic set
made here, or with TIERFLEET_MONTH_DEV=1 and TIERFLEET_DATA_DIR from the dev data
(dcrouter's MMLU and GSM8K prompts; small-ok when qwen2.5-7b scored at least as well
as nemotron-51b), where the candidate is refused today (see ``traffic``). Small tiers answer
right exactly when the label says so, the strong tier always does, and the shadow
judge reads the label. Over the month: shadow labels are collected under a budget, a
candidate is trained from them, shadow-routed for a day (decisions logged, none acted
on) and promoted through 5% -> 50% -> 100%, a deliberately bad candidate is refused,
and an expensive one forced past the offline gate is held in shadow by its estimated
cost, then, forced on, rolled back by the live cost alert.
"""

from __future__ import annotations

import random
import shutil
import time as _t
from pathlib import Path
from typing import Any

import fakeredis
import numpy as np
import pytest

from tierfleet.backends.base import Completion, CompletionRequest, HostHealth
from tierfleet.config import FleetConfig
from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind
from tierfleet.labels import Label, LabelStore
from tierfleet.learning import fleet_policy
from tierfleet.policy.correction import LabelCorrection
from tierfleet.policy.fleet_training import (
    eval_rows,
    file_candidate,
    split_labels,
    train_candidate,
    train_from_fleet,
)
from tierfleet.policy.models import CORRECTION_FILE, KIND_FILE, META_FILE, SMALL_OK_FILE, load_models
from tierfleet.policy.shadowlog import ShadowLog
from tierfleet.policy.versions import PolicyVersions, Rollout
from tierfleet.routequality import rollout_alerts, route_stats
from tierfleet.runner import Runner

DAYS, PER_DAY = 30, 30


def traffic(n: int) -> tuple[list[str], dict[str, bool], str]:
    import os

    from tierfleet.policy.training import load_ok_rows

    # Dev traffic only on request: on it, 10 days of labels (28 held out) do not yet lift the
    # cut (0.371 -> 0.336) and the gate rightly refuses the candidate; open in issue #15.
    want = os.environ.get("TIERFLEET_MONTH_DEV") == "1" and os.environ.get("TIERFLEET_DATA_DIR")
    dirs = [Path(os.environ["TIERFLEET_DATA_DIR"])] if want else []
    for d in dirs:
        if (d / "dcrouter_train.jsonl").exists():
            rows = [r for r in load_ok_rows(d) if r.source == "dcrouter" and r.task in ("mmlu", "gsm8k")
                    and "qwen2.5-7b-instruct" in r.scores and "llama-3.1-nemotron-51b-instruct" in r.scores]
            rng = random.Random(7)
            rng.shuffle(rows)
            rows = rows[:n]
            truth = {r.prompt: r.scores["qwen2.5-7b-instruct"] >= r.scores["llama-3.1-nemotron-51b-instruct"]
                     for r in rows}
            return [r.prompt for r in rows], truth, "dev"
    rng = random.Random(7)
    easy = ["What is the capital of {}?", "Translate '{}' into French.", "Is {} a fruit or a vegetable?",
            "Spell the word {} backwards."]
    hard = ["Prove that the sequence defined by {} converges, step by step.",
            "A train leaves at {} km/h; after three transfers and a delay, compute the arrival time exactly.",
            "Derive the closed form of the recurrence for {} and justify every step."]
    words = ["Peru", "apple", "carrot", "Norway", "banana", "x_n = x_(n-1)/2 + 1", "90", "a_n"]
    prompts, truth = [], {}
    for i in range(n):
        hard_one = rng.random() < 0.4
        p = rng.choice(hard if hard_one else easy).format(rng.choice(words)) + f" (case {i})"
        prompts.append(p)
        truth[p] = not hard_one if rng.random() > 0.1 else hard_one  # 10% label noise
    return prompts, truth, "synthetic"


class TruthHost:
    """A host that answers right when the hidden label says its tier can."""

    def __init__(self, name: str, strong: bool, truth: dict[str, bool]) -> None:
        self.name, self.strong, self.truth = name, strong, truth

    def complete(self, request: CompletionRequest) -> Completion:
        prompt = request.messages[-1].content
        good = self.strong or self.truth.get(prompt, True)
        return Completion(text="right" if good else "wrong", model=request.model, host=self.name,
                          tokens_in=len(prompt) // 4 + 1, tokens_out=50, latency_s=0.01, finish_reason="stop")

    def health(self) -> HostHealth:
        return HostHealth(host=self.name, ok=True)


class TruthJudge:
    name, version = "hidden-label", "1"

    def __init__(self, truth: dict[str, bool]) -> None:
        self.truth = truth

    def score(self, job: Job, small: str, large: str) -> tuple[float, float]:
        return float(self.truth[job.text()]), 1.0


@pytest.fixture
def month(core_config: FleetConfig, tmp_path: Path) -> dict[str, Any]:
    cfg = core_config
    cfg.learning.versions = True
    cfg.learning.versions_reload_s = 0.0
    cfg.learning.policy_dir = str(tmp_path / "policies")
    cfg.learning.shadow.rate = 0.5
    cfg.learning.shadow.daily_budget_usd = 5.0
    # Priced local boxes (an hour of the big one costs 20x the small one's), so where a
    # policy sends a job shows in its cost per request.
    cfg.hosts["ollama"].cost_per_hour = 1.0
    cfg.hosts["ollama-gpu"].cost_per_hour = 20.0
    prompts, truth, origin = traffic(DAYS * PER_DAY)
    r = fakeredis.FakeRedis(decode_responses=True)
    queue: list[Delivery] = []
    hosts = {h: TruthHost(h, cfg.hosts[h].tier == "paid", truth) for h in cfg.hosts}
    runner = Runner(cfg, r, queue.append, backend_for=hosts.__getitem__)
    runner.learning.judge = TruthJudge(truth)
    return {"cfg": cfg, "r": r, "queue": queue, "runner": runner, "prompts": prompts,
            "truth": truth, "origin": origin, "policy": fleet_policy(cfg, r)}


def run_day(m: dict[str, Any], day: int) -> None:
    for i, prompt in enumerate(m["prompts"][day * PER_DAY:(day + 1) * PER_DAY]):
        job = Job(id=f"d{day}-{i}", prompt=prompt, kind=Kind.AUTO, workflow="month")
        m["queue"].append(Delivery(job=job, route=m["policy"].route(job)))
        while m["queue"]:
            m["runner"].run(m["queue"].pop(0))


def version_stats(m: dict[str, Any], since: float) -> dict[str, Any]:
    recs = [x for x in m["runner"].ledger.raw_between(since, _t.time() + 60)
            if not x["job_id"].startswith("sh.")]  # shadow calls are the labels' cost, not a route's
    labels = LabelStore(m["r"], m["cfg"]).since(since)
    return route_stats(recs, labels, by="policy_version")


def clone(versions: PolicyVersions, parent: str) -> tuple[str, Path]:
    version, folder = versions.new_folder()
    for name in (KIND_FILE, SMALL_OK_FILE, META_FILE):
        src = versions.folder(parent) / name
        if src.exists():
            shutil.copyfile(src, folder / name)
    return version, folder


def test_a_simulated_month_learns_promotes_refuses_and_rolls_back(month: dict[str, Any]) -> None:
    m = month
    cfg, r = m["cfg"], m["r"]

    versions = PolicyVersions(cfg)
    rollout = Rollout(r, cfg, versions)
    # -- days 0-9: the shipped policy routes; shadow tests collect labels ------------------
    for day in range(10):
        run_day(m, day)
    labels = LabelStore(r, cfg).since()
    assert labels and all(lb.source == "shadow" and lb.judge == "hidden-label" for lb in labels)
    good = train_from_fleet(cfg, r, since_days=30)
    ev = good["evaluation"]
    assert ev["gate"] == "pass", ev
    assert ev["candidate"]["cut"] >= ev["current"]["cut"]  # better, on prompts it never saw
    # -- a deliberately bad candidate (trained on inverted labels) is refused -------------
    inverted = [lb.model_copy(update={"small_score": 1.0 - lb.small_score}) for lb in labels]
    bad = train_candidate(cfg, inverted, parent="shipped", versions=versions)
    # judged on the true held-out labels, not the inverted ones it trained on
    held = eval_rows(split_labels(labels, cfg.learning.holdout)[1])
    bad = file_candidate(cfg, versions, bad["version"], "shipped", held, bad["training"], bad["labels"])
    assert bad["evaluation"]["gate"] == "refused", bad["evaluation"]
    with pytest.raises(ValueError, match="failed its evaluation"):
        rollout.start(bad["version"])
    # -- day 10: the good candidate in shadow; its decisions logged, none acted on --------
    rollout.start(good["version"])
    t0 = _t.time()
    run_day(m, 10)
    shadow = ShadowLog(r, cfg).summary(good["version"])
    assert shadow.decisions == PER_DAY and shadow.current == "shipped"
    assert rollout.shadow_guard() == [], shadow  # it keeps more jobs small: no dearer
    acted = {x["policy_version"] for x in m["runner"].ledger.raw_between(t0 - 1, _t.time() + 60)
             if x["job_id"].startswith("d10-")}
    assert acted == {"shipped"}  # the candidate routed nothing
    # -- days 11-19: staged rollout of the good candidate, sticky per job id --------------
    rollout.advance()
    shares = []
    for stage in range(3):
        t0 = _t.time()
        for day in range(11 + 3 * stage, 14 + 3 * stage):
            run_day(m, day)
        st = rollout.state()
        shares.append(st["share"])
        stats = version_stats(m, t0)
        alerts = rollout_alerts(stats, st["current"], good["version"])
        assert rollout.guard(alerts) is None, alerts
        rollout.advance()
    assert shares == [0.05, 0.5, 1.0]
    assert rollout.state()["current"] == good["version"]
    # -- days 20-23: an expensive candidate forced past the gate and out of shadow; the live
    # alert rolls it back
    pricey, folder = clone(versions, good["version"])
    base = load_models(str(versions.folder(good["version"])))
    LabelCorrection(np.array([1.0, 0.0, -8.0]), 0.0, len(base.small_ok.vocab),
                    np.zeros(len(base.small_ok.vocab) + 1, np.int64), np.zeros(0, np.int64),
                    np.zeros(0), np.zeros(0)).save(folder / CORRECTION_FILE)
    filed = file_candidate(cfg, versions, pricey, good["version"], held, {"mode": "test"}, {})
    assert filed["evaluation"]["gate"] == "refused"  # quality holds, the cut does not
    rollout.start(pricey, force=True)  # an operator overrides the gate; shadow catches it
    run_day(m, 20)
    with pytest.raises(ValueError, match="stays in shadow"):
        rollout.advance()
    rollout.advance(force=True)  # overridden again; the live alert catches it
    rollout.advance()  # 50%, so three days give enough of its jobs
    t0 = _t.time()
    for day in range(21, 24):
        run_day(m, day)
    stats = version_stats(m, t0)
    alerts = rollout_alerts(stats, good["version"], pricey)
    assert [a.name for a in alerts] == ["cost_per_request"]
    after = rollout.guard(alerts)
    assert after is not None and after["candidate"] is None and after["current"] == good["version"]
    assert versions.manifest(pricey)["status"] == "rolled back"
    for day in range(24, DAYS):
        run_day(m, day)
    # -- the month's figures -------------------------------------------------------------
    all_labels = LabelStore(r, cfg).since()
    shadow_cost = sum(x["cost_usd"] for x in m["runner"].ledger.raw_between(_t.time() - 86400, _t.time() + 60)
                      if x["job_id"].startswith("sh."))
    stats = version_stats(m, 0)
    print(f"\nmonth ({m['origin']} traffic, {DAYS * PER_DAY} jobs): {len(all_labels)} labels, "
          f"shadow spend ${shadow_cost:.4f}; cut at 95% on held-out labels "
          f"{ev['current']['cut']:.3f} (shipped) -> {ev['candidate']['cut']:.3f} ({good['version']}); "
          f"quality {ev['current']['quality']:.3f} -> {ev['candidate']['quality']:.3f}; "
          f"bad candidate quality {bad['evaluation']['candidate']['quality']:.3f} refused; "
          + "; ".join(f"{k}: {s.requests} jobs, ${s.cost_per_request or 0:.5f}/job, "
                      f"small quality {s.small_quality if s.small_quality is not None else float('nan'):.3f}"
                      for k, s in sorted(stats.items())))
    assert len(all_labels) > len(labels) and shadow_cost > 0
    assert stats[good["version"]].requests > 0 and stats[pricey].requests > 0
    assert isinstance(all_labels[0], Label)
