"""Nothing of a confidential job reaches an operator's screen: a scan of every surface.

A fleet runs confidential jobs down every path (answered locally, a fallback hop, a
rules job, a job parked and then dead-lettered), with Flower watching. Then every
surface an operator or a dashboard sees is read and searched for the jobs' words (a
secret token in each prompt, and the answers, which quote their prompts): Flower's REST
API and task pages, Celery's own result keys and every other Redis key outside the
job's own records, worker and Flower logs, Prometheus metrics, ``status --json``,
``dlq list --json`` and the JSONL ledger.

Allowed to hold the words: the job's own transport and records (tier queues, kombu's
``unacked``, the result the producer reads, the parked and dead-letter bodies a replay
needs, the answer cache, the note feedback learns from, kept as long as the result),
which only the fleet's own processes read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import redis
from prometheus_client import generate_latest

from tests.integration.test_flower import wait_for
from tests.support.harness import ModelFleet, cli, flower_for
from tierfleet.metrics import fleet_registry

SECRET = "zanzibarquartz"
# The job's own records: transport, its result, what replay needs. Everything else is
# an operator surface.
ALLOWED = ("tf:result:", "tf:parked", "tf:dlq", "tf:open", "tf:cache:", "tf:external:",
           "tf:delivery", "tf:answered:", "unacked", "_kombu.binding.")


def _dump(client: redis.Redis, key: str) -> str:
    kind = client.type(key)
    if kind == "string":
        return str(client.get(key))
    if kind == "hash":
        return json.dumps(client.hgetall(key))
    if kind == "list":
        return json.dumps(client.lrange(key, 0, -1))
    if kind == "zset":
        return json.dumps(client.zrange(key, 0, -1, withscores=True))
    if kind == "set":
        return json.dumps(sorted(client.smembers(key)))
    if kind == "stream":
        return json.dumps(client.xrange(key))
    return ""


def test_no_confidential_word_on_any_operator_surface(tmp_path: Path, redis_url: str,
                                                       rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient,
                    reliability={"max_attempts": 1, "park_backoff_s": [0.3]}) as fleet:
        for tier in ("rules", "local-mac", "local-gpu", "runpod", "paid"):
            fleet.start(tier)
        flower_log = tmp_path / "flower.log"
        with flower_for(fleet.config_path, tmp_path) as base:
            d = fleet.dispatcher()
            jobs = {
                "answered": {"kind": "summary", "workflow": "hr",
                             "prompt": f"Summarize: {SECRET} salary review for Dana Smith."},
                "rules": {"kind": "keyword_route", "input": {"text": f"vpn {SECRET} payroll"}},
                "failed_json": {"kind": "json_validate",
                                "input": {"document": f'{{"x": "{SECRET}"', "schema": {}}},
            }
            fleet.sim.down("sim-gpu")  # the code job falls back local-gpu -> local-mac
            jobs["fallback"] = {"kind": "code", "prompt": f"Refactor {SECRET}_ledger() for speed."}
            handles = {name: d.submit({**job, "privacy": "confidential"}) for name, job in jobs.items()}
            results = {name: d.result(h.id, timeout=60) for name, h in handles.items()}
            assert results["answered"].ok and results["fallback"].ok, results
            assert len(results["fallback"].trail) > 1
            # Every local host down: the last job parks, then goes to the dead letters.
            fleet.sim.down("sim-ollama")
            dead = d.submit({"kind": "summary", "privacy": "confidential",
                             "prompt": f"Summarize the {SECRET} board minutes."})
            assert d.result(dead.id, timeout=60).status.value == "dead"
            ids = [h.id for h in handles.values()] + [dead.id]
            answers = [r.text for r in results.values() if r.text]
            assert any(SECRET in a for a in answers), "the answers quote their prompts"
            words = [SECRET, *(a[len(a) // 3: len(a) // 3 + 24] for a in answers if len(a) > 40)]

            def tasks_listed() -> dict | None:
                got = httpx.get(f"{base}/api/tasks", timeout=10).json()
                return got if all(i in got for i in ids) else None

            surfaces: dict[str, str] = {"flower /api/tasks": json.dumps(
                wait_for("Flower to list the tasks", tasks_listed))}
            time.sleep(1.0)  # the last events (results, failures) reach Flower
            for i in ids:
                surfaces[f"flower /api/task/info/{i}"] = httpx.get(
                    f"{base}/api/task/info/{i}", timeout=10).text
                surfaces[f"flower /task/{i}"] = httpx.get(f"{base}/task/{i}", timeout=10).text
                surfaces[f"flower /api/task/result/{i}"] = httpx.get(
                    f"{base}/api/task/result/{i}", timeout=10).text
            surfaces["flower /tasks/datatable"] = httpx.get(
                f"{base}/tasks/datatable", params={"draw": 1, "start": 0, "length": 100},
                timeout=10).text
            for key in rclient.scan_iter(count=1000):
                if key in fleet.config.tiers or key.split("\x06\x16")[0] in fleet.config.tiers:
                    continue  # a tier's queue: the transport itself
                if not key.startswith(ALLOWED):
                    surfaces[f"redis {key}"] = _dump(rclient, key)
            surfaces["metrics"] = generate_latest(fleet_registry(rclient, fleet.config)).decode()
            for args in (["status", "--json"], ["status"], ["dlq", "list", "--json"],
                         ["dlq", "list"]):
                out = cli(args, fleet.config_path)
                assert out.returncode == 0, out.stderr
                surfaces["cli " + " ".join(args)] = out.stdout + out.stderr
            for w in fleet.workers:
                surfaces[f"log {w.name}"] = w.log()
            surfaces["log flower"] = flower_log.read_text(errors="replace")
            for f in (tmp_path / "ledger").glob("**/*"):
                if f.is_file():
                    surfaces[f"ledger {f.name}"] = f.read_text(errors="replace")

    assert any(k.startswith("flower /task/") for k in surfaces)
    leaks = {name: w for name, text in surfaces.items() for w in words if w and w in text}
    print(f"\nscanned {len(surfaces)} surfaces for {len(words)} confidential strings; "
          f"leaks: {len(leaks)}")
    assert not leaks, leaks
