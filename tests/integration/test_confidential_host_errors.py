"""A host's error that quotes a confidential job never reaches an operator's screen.

Hosts echo what they were sent in their errors ("failed while reading: <prompt>"), and
that text travels: the fallback hop's reason, the breaker's reason, the park and dead
letter reasons, the ledger's error column, the worker's log lines. A fleet runs
confidential jobs against hosts whose 500s quote the prompt (a fallback, then a job
that dies with every local host failing), replays the dead letter once the hosts are
well, and every operator surface is scanned for the prompt's secret words: Flower,
Redis outside the jobs' own records, worker logs, metrics, ``status`` (table and JSON),
``dlq list``, ``report --json`` and the JSONL ledger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import redis
from prometheus_client import generate_latest

from tests.integration.test_confidential_scan import ALLOWED, _dump
from tests.integration.test_flower import wait_for
from tests.support.harness import ModelFleet, cli, flower_for
from tierfleet.metrics import fleet_registry

SECRET = "quetzalmarrow"
SECRET2 = "obsidianfjord"


def _echo(prompt: str) -> str:
    """What a careless host answers: its own error text quoting the request."""
    return f"runner crashed while evaluating the request: {prompt!r}"


def test_host_errors_quoting_a_confidential_prompt_stay_off_operator_surfaces(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient,
                    reliability={"max_attempts": 1, "park_backoff_s": [0.3]}) as fleet:
        for tier in ("local-mac", "local-gpu"):
            fleet.start(tier)
        with flower_for(fleet.config_path, tmp_path) as base:
            d = fleet.dispatcher()
            code = f"Refactor {SECRET}_ledger() for {SECRET2} speed."
            fleet.sim.fault("sim-gpu", "error", status=500, message=_echo(code))
            moved = d.submit({"kind": "code", "privacy": "confidential", "prompt": code})
            r = d.result(moved.id, timeout=60)
            assert r.ok and len(r.trail) > 1, r  # local-gpu's 500, answered on local-mac
            # Every local host fails with the prompt in its error: parked, then dead.
            minutes = f"Summarize the {SECRET} board minutes about {SECRET2}."
            fleet.sim.fault("sim-ollama", "error", status=500, message=_echo(minutes))
            fleet.sim.clear("sim-gpu")
            fleet.sim.fault("sim-gpu", "error", status=500, message=_echo(minutes))
            dead = d.submit({"kind": "summary", "privacy": "confidential", "prompt": minutes})
            assert d.result(dead.id, timeout=60).status.value == "dead"
            surfaces: dict[str, str] = {}
            for args in (["status", "--json"], ["status"], ["dlq", "list", "--json"],
                         ["dlq", "list"]):
                out = cli(args, fleet.config_path)
                assert out.returncode == 0, out.stderr
                surfaces["cli (dead) " + " ".join(args)] = out.stdout + out.stderr
            # The hosts are well again: the dead letter is replayed and answered.
            fleet.sim.clear()
            time.sleep(2.5)  # the breakers' open time
            out = cli(["dlq", "replay", dead.id], fleet.config_path)
            assert out.returncode == 0, out.stderr
            assert d.result(dead.id, timeout=60).ok
            ids = [moved.id, dead.id]

            def tasks_listed() -> dict | None:
                got = httpx.get(f"{base}/api/tasks", timeout=10).json()
                return got if all(i in got for i in ids) else None

            surfaces["flower /api/tasks"] = json.dumps(wait_for("Flower's tasks", tasks_listed))
            time.sleep(1.0)
            for i in ids:
                surfaces[f"flower /api/task/info/{i}"] = httpx.get(
                    f"{base}/api/task/info/{i}", timeout=10).text
                surfaces[f"flower /task/{i}"] = httpx.get(f"{base}/task/{i}", timeout=10).text
            for key in rclient.scan_iter(count=1000):
                if key in fleet.config.tiers or key.split("\x06\x16")[0] in fleet.config.tiers:
                    continue
                if not key.startswith(ALLOWED):
                    surfaces[f"redis {key}"] = _dump(rclient, key)
            surfaces["metrics"] = generate_latest(fleet_registry(rclient, fleet.config)).decode()
            for args in (["status", "--json"], ["status"], ["report", "--json"],
                         ["report", "--by", "tier"]):
                out = cli(args, fleet.config_path)
                assert out.returncode == 0, out.stderr
                surfaces["cli " + " ".join(args)] = out.stdout + out.stderr
            for w in fleet.workers:
                surfaces[f"log {w.name}"] = w.log()
            surfaces["log flower"] = (tmp_path / "flower.log").read_text(errors="replace")
            time.sleep(1.5)  # the ledger's JSONL export
            for f in (tmp_path / "ledger").glob("**/*"):
                if f.is_file():
                    surfaces[f"ledger {f.name}"] = f.read_text(errors="replace")

    leaks = {name: [w for w in (SECRET, SECRET2) if w in text] for name, text in surfaces.items()}
    leaks = {k: v for k, v in leaks.items() if v}
    print(f"\nscanned {len(surfaces)} surfaces; leaks: {sorted(leaks)}")
    assert not leaks, leaks
