"""The fleet end to end on the rules tier: real redis-server, real worker processes, JSON."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.harness import Worker, cli, read_jsonl, write_config
from tierfleet.config import load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.errors import JobRejected

pytestmark = pytest.mark.integration


def _jobs(n: int, seed: int = 7) -> list[tuple[dict[str, Any], Any]]:
    """Mixed rules jobs with the answer each must produce."""
    rng = random.Random(seed)
    out: list[tuple[dict[str, Any], Any]] = []
    for i in range(n):
        k = i % 5
        if k == 0:
            word = rng.choice(["VPN", "Outlook", "printer"])
            expect = {"VPN": "vpn", "Outlook": "email", "printer": "review"}[word]
            out.append(({"kind": "keyword_route", "input": {"text": f"ticket {i}: my {word} broke"},
                         "workflow": "support-triage"}, ("label", expect)))
        elif k == 1:
            items = [f"item {j % 3}" for j in range(rng.randint(3, 9))] + ["Item 0 "]
            out.append(({"kind": "dedupe", "input": {"items": items}}, ("count_out", 3)))
        elif k == 2:
            valid = rng.random() < 0.5
            doc = {"n": 1} if valid else {"n": "one"}
            out.append(({"kind": "json_validate", "input": {
                "document": doc,
                "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
                ("valid", valid)))
        elif k == 3:
            m = rng.randint(1, 5)
            text = " ".join(f"id={j}" for j in range(m))
            out.append(({"kind": "regex_extract", "input": {"text": text, "pattern": r"id=(?P<id>\d+)"}},
                        ("count", m)))
        else:
            lines = "\n".join([
                "2026-11-21 02:01:00 ERROR disk full",
                "2026-11-21 02:05:00 INFO ok",
                "2026-11-21 02:20:00 ERROR late",
            ])
            out.append(({"kind": "log_slice", "input": {"text": lines, "levels": ["ERROR"],
                                                         "start": "02:00", "end": "02:15"}},
                        ("count", 1)))
    return out


def _check(result: dict[str, Any], expect: Any) -> None:
    field, value = expect
    assert result["status"] == "succeeded", result
    assert result["output"][field] == value, (result["output"], expect)
    assert result["trail"] == ["rules"]
    assert result["cost_usd"] == 0


def test_200_rules_jobs_through_api_and_cli(tmp_path: Path, redis_url: str,
                                            rclient: redis.Redis) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    config = load_config(cfg_path)
    rules_worker = Worker("rules", cfg_path, concurrency=2).start(rclient)
    try:
        d = Dispatcher(config)
        cases = _jobs(200)
        api_cases, cli_cases = cases[:100], cases[100:]
        # Python API: half one by one, half as a batch.
        handles = [d.submit(j) for j, _ in api_cases[:50]]
        handles += d.submit_many([j for j, _ in api_cases[50:]])
        assert all(h.route.tier == "rules" for h in handles)
        results = d.results_for([h.id for h in handles], timeout=120)
        for r, (_, expect) in zip(results, api_cases, strict=True):
            _check(r.model_dump(mode="json"), expect)

        # CLI, exactly as the README says: --file --wait --json.
        jobs_file = tmp_path / "jobs.jsonl"
        jobs_file.write_text("\n".join(json.dumps(j) for j, _ in cli_cases) + "\n")
        proc = cli(["submit", "--file", str(jobs_file), "--wait", "--json"], cfg_path,
                   env={"TIERFLEET_REDIS_URL": redis_url})
        assert proc.returncode == 0, proc.stderr
        out = read_jsonl(proc.stdout)
        assert len(out) == 100
        for r, (_, expect) in zip(out, cli_cases, strict=True):
            _check(r, expect)

        # Jobs in = jobs out, and the ledger billed each exactly once.
        assert len({r.job_id for r in results} | {r["job_id"] for r in out}) == 200
    finally:
        rules_worker.stop()


def test_rules_worker_never_takes_another_tiers_job(tmp_path: Path, redis_url: str,
                                                     rclient: redis.Redis) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    config = load_config(cfg_path)
    w = Worker("rules", cfg_path).start(rclient)
    try:
        d = Dispatcher(config)
        model_jobs = [d.submit({"kind": "summary", "prompt": f"summarise note {i}"}) for i in range(10)]
        rules_jobs = [d.submit(j) for j, _ in _jobs(10)]
        d.results_for([h.id for h in rules_jobs], timeout=60)
        assert all(h.route.tier == "local-mac" for h in model_jobs)
        # Every model job is still waiting on its own queue, untouched by the rules worker.
        assert rclient.llen("local-mac") == 10
        log = w.log()
        assert not any(h.id in log for h in model_jobs)
        assert all(d.result(h.id).status.value == "pending" for h in model_jobs)
    finally:
        w.stop()


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"kind": "telepathy", "prompt": "x"}, "kind"),
        ({"kind": "summary"}, "prompt"),
        ({"kind": "summary", "prompt": "x", "colour": "red"}, "colour"),
        ({"kind": "json_validate", "input": {"document": {}, "schema": {"type": "nonsense"}}},
         "input.schema"),
        ({"kind": "regex_extract", "input": {"text": "a", "pattern": "(unclosed"}}, "input.pattern"),
        ({"kind": "summary", "prompt": "x" * 500_001}, "prompt"),
        ({"kind": "dedupe", "input": {"items": ["y" * 1000] * 3000}}, "input"),
        ({"kind": "summary", "prompt": "x", "tier": "moon"}, "tier"),
    ],
)
def test_bad_input_is_rejected_at_submit_naming_the_field(
    tmp_path: Path, redis_url: str, job: dict[str, Any], field: str
) -> None:
    config = load_config(write_config(tmp_path / "fleet.toml", redis_url))
    d = Dispatcher(config)
    with pytest.raises(JobRejected) as info:
        d.submit(job)
    assert info.value.field.startswith(field), str(info.value)
    assert d.r.llen("rules") == 0 and d.r.llen("local-mac") == 0  # nothing enqueued


def test_cli_reports_a_rejection_clearly(tmp_path: Path, redis_url: str) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    proc = cli(["submit", "--kind", "json_validate", "--input",
                '{"document": 1, "schema": {"type": 5}}'], cfg_path)
    assert proc.returncode != 0
    assert "input.schema" in proc.stderr and "Traceback" not in proc.stderr


def test_hostile_regex_fails_cleanly_and_worker_survives(tmp_path: Path, redis_url: str,
                                                         rclient: redis.Redis) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    d = Dispatcher(load_config(cfg_path))
    w = Worker("rules", cfg_path).start(rclient)
    try:
        evil = d.submit({"kind": "regex_extract",
                         "input": {"text": "a" * 5000 + "!", "pattern": r"(\w+\s?)*$"}})
        fine = d.submit({"kind": "regex_extract", "input": {"text": "id=4", "pattern": r"id=(\d)"}})
        bad, good = d.results_for([evil.id, fine.id], timeout=60)
        assert bad.status.value == "failed" and "timed out" in (bad.error or "")
        assert good.status.value == "succeeded"
        assert w.proc is not None and w.proc.poll() is None
    finally:
        w.stop()


def test_tierfleet_worker_wraps_celery_for_one_tier(tmp_path: Path, redis_url: str,
                                                     rclient: redis.Redis) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    cfg_path = write_config(tmp_path / "fleet.toml", redis_url)
    bad = cli(["worker", "--tier", "moon"], cfg_path)
    assert bad.returncode != 0 and "unknown tier moon" in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "tierfleet", "worker", "--tier", "rules",
                             "--config", str(cfg_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        hb = f"tf:hb:rules@{socket.gethostname()}"
        deadline = time.monotonic() + 30
        while not rclient.exists(hb):
            assert time.monotonic() < deadline and proc.poll() is None, "worker did not start"
            time.sleep(0.1)
        assert json.loads(rclient.get(hb) or "{}")["queues"] == ["rules"]
        d = Dispatcher(load_config(cfg_path))
        h = d.submit({"kind": "keyword_route", "input": {"text": "vpn down"}})
        assert d.result(h.id, timeout=30).output["label"] == "vpn"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
