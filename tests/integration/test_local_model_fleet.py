"""A tier answered by a real model: llama.cpp's server with SmolLM2-135M on this CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.fleets import every_kind_on
from tests.support.harness import Worker, write_config
from tierfleet.config import load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.lab.localmodel import LOCAL_MODEL_NAME, LocalModelServer

pytestmark = pytest.mark.integration

REAL_LOCAL = """
[tiers.rules]
place = "rules"

[tiers.local-mac]
place = "local"
models = {{ default = "{model}" }}

[hosts.smollm2]
kind = "openai"
url = "{url}"
tier = "local-mac"
models = ["{model}"]
context_window = 4096
timeout_s = 120

[models."{model}"]
input_per_mtok = 0.0
output_per_mtok = 0.0
context_window = 4096

[policy]
high_risk_tier = "local-mac"
premium_tier = "local-mac"
large_job_tier = "local-mac"
spill_order = ["local-mac"]

""" + every_kind_on("local-mac")


def test_summary_and_classification_answered_by_the_real_model(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with LocalModelServer(port=0) as server:
        body = REAL_LOCAL.format(model=LOCAL_MODEL_NAME, url=server.url)
        cfg_path = write_config(tmp_path / "fleet.toml", redis_url, body)
        worker = Worker("local-mac", cfg_path).start(rclient)
        try:
            d = Dispatcher(load_config(cfg_path))
            summary = d.submit({
                "kind": "summary", "max_tokens": 40, "workflow": "inbox",
                "prompt": "Summarize in one sentence: The deploy failed at 02:10 because the "
                          "database migration timed out; we rolled back and will retry tonight."})
            label = d.submit({
                "kind": "classification", "max_tokens": 8, "workflow": "support-triage",
                "prompt": "Classify this ticket as vpn, email or hardware. Answer with one word. "
                          "Ticket: my laptop screen is cracked."})
            for h in (summary, label):
                assert h.route.tier == "local-mac"
            results = d.results_for([summary.id, label.id], timeout=240)
            for r in results:
                print(f"\n{r.kind}: {r.text!r} ({r.tokens_in} in, {r.tokens_out} out, "
                      f"{r.latency_s:.2f} s)")
                assert r.ok, (r, worker.log()[-3000:])
                assert r.host == "smollm2" and r.model == LOCAL_MODEL_NAME
                assert not r.simulated
                assert r.text and r.text.strip()
                # Counts reported by llama.cpp itself, not estimated.
                assert r.tokens_in > 10 and r.tokens_out > 0 and not r.tokens_estimated
        finally:
            worker.stop()
