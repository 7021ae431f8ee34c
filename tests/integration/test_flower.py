"""Flower against a real fleet: a worker per tier, rules jobs run to completion, and
Flower's REST API shows every worker and every finished task by id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from tests.support.fleets import tiers_only
from tests.support.harness import Worker, write_config
from tierfleet.config import load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.errors import ConfigError
from tierfleet.flower import flower_command, validate_basic_auth
from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.lab.processes import free_port

T = TypeVar("T")

TIERS = ("rules", "local-mac", "local-gpu", "runpod", "paid")
FIVE_TIERS = tiers_only()
PASSWORD = "s3cret-redis-pw-7f2a"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except httpx.HTTPError as exc:
            got, last = None, exc
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


@pytest.fixture
def secured_redis() -> Iterator[EmbeddedRedis]:
    """A private redis-server with a password, to check Flower never shows it."""
    with EmbeddedRedis() as server:
        redis.Redis(port=server.port).config_set("requirepass", PASSWORD)
        yield server


@pytest.mark.integration
def test_flower_sees_a_worker_per_tier_and_the_finished_tasks(
    tmp_path: Path, secured_redis: EmbeddedRedis
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{secured_redis.port}/0"
    cfg_path = write_config(tmp_path / "fleet.toml", url, FIVE_TIERS)
    config = load_config(cfg_path)
    client = redis.Redis.from_url(url, decode_responses=True)
    workers: list[Worker] = []
    flower: subprocess.Popen[bytes] | None = None
    flower_log = tmp_path / "flower.log"
    try:
        for tier in TIERS:
            workers.append(Worker(tier, cfg_path, concurrency=1).start(client))
        port = free_port()
        env = {**os.environ, "TIERFLEET_CONFIG": str(cfg_path)}
        with flower_log.open("wb") as log:
            flower = subprocess.Popen(
                [sys.executable, "-m", "tierfleet", "flower", "--port", str(port)],
                env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        api = f"http://127.0.0.1:{port}/api"
        names = {w.name: w.tier for w in workers}

        def workers_seen() -> dict[str, Any] | None:
            assert flower is not None and flower.poll() is None, flower_log.read_text()
            got = httpx.get(f"{api}/workers", params={"refresh": 1}, timeout=10).json()
            return got if set(names) <= set(got) else None

        seen = wait_for("Flower to list every worker", workers_seen)
        for name, tier in names.items():
            queues = [q["name"] for q in seen[name]["active_queues"]]
            assert queues == [tier], (name, queues)
            assert "tierfleet.run_job" in seen[name]["registered"]

        # Task events are live (not stored): wait until Flower hears the workers'
        # heartbeats before starting the jobs it must see.
        def events_live() -> bool:
            status = httpx.get(f"{api}/workers", params={"status": 1}, timeout=10).json()
            return all(status.get(n) for n in names)

        wait_for("Flower to receive worker events", events_live)

        d = Dispatcher(config)
        handles = [
            d.submit({"kind": "keyword_route", "input": {"text": f"ticket {i}: VPN down"},
                      "workflow": "support-triage"})
            for i in range(3)
        ]
        handles.append(d.submit({"kind": "dedupe", "input": {"items": ["a", "a ", "b"]}}))
        results = d.results_for([h.id for h in handles], timeout=60)
        assert all(r.ok for r in results), results

        def tasks_seen() -> dict[str, Any] | None:
            got = httpx.get(f"{api}/tasks", timeout=10).json()
            done = {i: got[i] for i in (h.id for h in handles)
                    if i in got and got[i].get("state") == "SUCCESS"}
            return done if len(done) == len(handles) else None

        tasks = wait_for("Flower to show the finished tasks", tasks_seen)
        rules_worker = next(n for n, t in names.items() if t == "rules")
        for h in handles:
            task = tasks[h.id]
            assert task["name"] == f"{h.route.kind.value}@rules"
            assert task["worker"] == rules_worker
            # The job is readable in the kwargs: its kind and workflow, as sent.
            assert h.route.kind.value in task["kwargs"]
        assert "support-triage" in tasks[handles[0].id]["kwargs"]

        one = httpx.get(f"{api}/task/info/{handles[0].id}", timeout=10).json()
        assert one["name"] == "keyword_route@rules" and one["state"] == "SUCCESS"

        # The broker password never shows, in worker details (conf, broker) or tasks.
        everything = json.dumps(seen) + json.dumps(tasks) + json.dumps(one)
        assert PASSWORD not in everything
    finally:
        if flower is not None and flower.poll() is None:
            os.killpg(flower.pid, signal.SIGTERM)
            try:
                flower.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(flower.pid, signal.SIGKILL)
                flower.wait()
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in workers:
            w.stop()
        client.close()


def test_flower_access_rules(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", "redis://127.0.0.1:6399/0", FIVE_TIERS)
    base_env = {"PATH": os.environ.get("PATH", ""), "FLOWER_UNAUTHENTICATED_API": "true",
                "FLOWER_BASIC_AUTH": "leaked:from-shell"}

    local = flower_command(cfg_path, port=5599, address="127.0.0.1", environ=base_env)
    assert local.env["FLOWER_UNAUTHENTICATED_API"] == "true"
    assert "FLOWER_BASIC_AUTH" not in local.env
    assert local.env["TIERFLEET_CONFIG"] == str(cfg_path.resolve())
    assert local.argv[1:6] == ["-m", "celery", "-A", "tierfleet.worker", "flower"]
    assert "--port=5599" in local.argv and "--address=127.0.0.1" in local.argv
    assert any(a.startswith("--tasks_columns=") and "kwargs" in a for a in local.argv)
    assert local.url == "http://127.0.0.1:5599"

    # Off loopback: never the unauthenticated API, and basic auth is required.
    with pytest.raises(ConfigError, match="--basic-auth"):
        flower_command(cfg_path, address="0.0.0.0", environ=base_env)
    public = flower_command(cfg_path, address="0.0.0.0", basic_auth="ops:pa55word",
                            environ=base_env)
    assert "FLOWER_UNAUTHENTICATED_API" not in public.env
    assert public.env["FLOWER_BASIC_AUTH"] == "ops:pa55word"
    assert not any("pa55word" in a for a in public.argv)  # not visible in ps
    assert public.authenticated

    for bad in ("", "nocolon", "user:", ":pass", "a:b,,c"):
        with pytest.raises(ConfigError):
            validate_basic_auth(bad)
    with pytest.raises(ConfigError) as info:
        validate_basic_auth("admin:hunter2,broken")
    assert "hunter2" not in str(info.value)
    assert validate_basic_auth(" a:b , c:d ") == "a:b,c:d"

    with pytest.raises(ConfigError):
        flower_command(tmp_path / "missing.toml", environ=base_env)


@pytest.mark.integration
def test_flower_is_an_operators_view(tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    """Flower names each task ``kind@tier`` (with the hops before it), shows the job's
    bookkeeping as its kwargs and a summary as its result, and the job's real state:
    SUCCESS, FAILURE for a failed or dead job, RETRY while it is parked."""
    from tests.support.harness import ModelFleet, flower_for

    with ModelFleet(tmp_path, redis_url, rclient,
                    reliability={"max_attempts": 1, "park_backoff_s": [5.0]}) as fleet:
        for tier in ("rules", "local-mac", "local-gpu"):
            fleet.start(tier)
        with flower_for(fleet.config_path, tmp_path) as base:
            api = f"{base}/api"
            d = fleet.dispatcher()
            answered = d.submit({"kind": "summary", "workflow": "hr",
                                 "prompt": "Summarize: the quarterly report on widgets."})
            bad_json = d.submit({"kind": "json_validate", "workflow": "intake",
                                 # accepted at submit, refused by the rule when it runs
                                 "input": {"document": "[" * 200 + "]" * 200, "schema": {}}})
            fleet.sim.down("sim-gpu")  # local-gpu -> local-mac
            hop = d.submit({"kind": "code", "privacy": "confidential",
                            "prompt": "Refactor parse_rows() for speed."})
            assert d.result(answered.id, timeout=60).ok
            assert not d.result(bad_json.id, timeout=60).ok
            hopped = d.result(hop.id, timeout=60)
            assert hopped.ok and hopped.trail == ["local-gpu", "local-mac"], hopped

            def task(job_id: str, state: str) -> dict[str, Any] | None:
                got = httpx.get(f"{api}/task/info/{job_id}", timeout=10)
                info = got.json() if got.status_code == 200 else {}
                return info if info.get("state") == state else None

            one = wait_for("the answered task", lambda: task(answered.id, "SUCCESS"))
            assert one["name"] == "summary@local-mac"
            shown = json.loads(one["kwargs"])
            assert (shown["job_id"], shown["kind"], shown["workflow"], shown["tier"],
                    shown["trail"]) == (answered.id, "summary", "hr", "local-mac", [])
            assert "widgets" not in one["kwargs"] and "widgets" not in str(one["result"])
            assert "succeeded" in str(one["result"]) and answered.id in str(one["result"])

            failed = wait_for("the failed task", lambda: task(bad_json.id, "FAILURE"))
            assert failed["name"] == "json_validate@rules"
            assert "JobFailed" in str(failed["exception"])

            moved = wait_for("the hopped task", lambda: task(hop.id, "SUCCESS"))
            assert moved["name"] == "code@local-gpu>local-mac"
            shown = json.loads(moved["kwargs"])
            assert shown["trail"] == ["local-gpu"] and shown["tier"] == "local-mac"
            assert shown["hops"] and "local-gpu -> local-mac" in shown["hops"][0]
            # Only tiers a confidential job may reach are shown as where it goes next.
            assert not {"runpod", "paid"} & set(shown["next"])
            assert "parse_rows" not in json.dumps(moved)

            # Every local host down: parked (RETRY, acked), then dead (FAILURE).
            fleet.sim.down("sim-ollama")
            dead = d.submit({"kind": "summary", "privacy": "confidential",
                             "prompt": "Summarize the board minutes."})
            parked = wait_for("the parked task", lambda: task(dead.id, "RETRY"))
            assert "parked" in str(parked["exception"])
            assert d.result(dead.id, timeout=60).status.value == "dead"
            gone = wait_for("the dead task", lambda: task(dead.id, "FAILURE"))
            assert "JobDead" in str(gone["exception"]) and "board" not in json.dumps(gone)

            # The Failed filter lists exactly the failed and the dead job.
            listed = httpx.get(f"{api}/tasks", params={"state": "FAILURE"}, timeout=10).json()
            assert set(listed) == {bad_json.id, dead.id}
            # Nothing is left unacked: the dead job's message was acknowledged.
            wait_for("every message acked", lambda: rclient.hlen("unacked") == 0)
            assert all(rclient.llen(t) == 0 for t in fleet.config.tiers)
            # Celery's own log lines name the task as Flower does.
            logs = "".join(w.log() for w in fleet.workers)
            assert "Task code@local-gpu>local-mac[" in logs and "Task tierfleet.run_job[" not in logs
            # JSON logging (the default): Celery's own lines are JSON lines too.
            celery_lines = [ln for ln in logs.splitlines() if "succeeded in" in ln]
            assert celery_lines
            for ln in celery_lines:
                rec = json.loads(ln)
                assert rec["logger"].startswith("celery") and rec["level"] == "INFO", ln
