"""Fault tests: kill workers, kill hosts, restart Redis. Each counts jobs in and jobs out.

Every test ends by asserting the number of lost jobs is zero and printing the counts.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.harness import ModelFleet
from tierfleet.health import Breaker
from tierfleet.jobs import Result, Status
from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.ledger import Ledger

pytestmark = pytest.mark.integration

LOCAL = {"rules", "local-mac", "local-gpu"}


def _account(results: list[Result], n_in: int, label: str) -> None:
    out = Counter(r.status.value for r in results)
    lost = n_in - out["succeeded"] - out["failed"]
    print(f"\n[{label}] jobs in: {n_in}  jobs out: {sum(out.values())}  {dict(out)}  lost: {lost}")
    assert lost == 0, f"{lost} job(s) lost"


def _billed_once(ledger: Ledger, ids: list[str]) -> None:
    final = Counter()
    for job_id in ids:
        for a in ledger.job_attempts(job_id):
            if a.outcome in ("ok", "cached", "escalated"):
                final[(job_id, a.attempt)] += 1
    twice = {k: v for k, v in final.items() if v > 1}
    print(f"billed twice: {len(twice)}")
    assert not twice


def _mixed_jobs(n: int) -> list[dict[str, Any]]:
    jobs = []
    for i in range(n):
        k = i % 10
        if k < 5:
            jobs.append({"kind": "keyword_route", "input": {"text": f"ticket {i} vpn"}})
        elif k < 7:
            jobs.append({"kind": "summary", "prompt": f"Summarize note {i}: the deploy slipped.",
                         "workflow": "inbox"})
        elif k < 9:
            jobs.append({"kind": "code", "prompt": f"Write a function number {i} in Python."})
        else:
            jobs.append({"kind": "writing", "prompt": f"Write a customer note {i}.", "tier": "paid"})
    return jobs


def _tags_to_jobs(client: redis.Redis, tags: list[str]) -> list[str]:
    ids = []
    for raw in client.hmget("unacked", tags) if tags else []:
        if raw:
            payload = json.loads(raw)[0]
            ids.append(payload["headers"]["id"])
    return ids


def test_1000_jobs_survive_killing_a_pool_child_and_a_whole_node(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        # Each summary takes ~0.6 s, longer than a heartbeat, so the local-mac nodes hold
        # jobs they have announced when killed.
        fleet.sim.fault("sim-ollama", "slow", seconds=0.6)
        fleet.start("rules", concurrency=2)
        fleet.start("local-gpu")
        fleet.start("paid")
        victim = fleet.start("local-mac", concurrency=2, name="victim@test")
        fleet.start("local-mac", concurrency=2, name="survivor@test")
        d = fleet.dispatcher()
        jobs = _mixed_jobs(1000)
        handles = d.submit_many(jobs)
        assert Counter(h.route.tier for h in handles) == {
            "rules": 500, "local-mac": 200, "local-gpu": 200, "paid": 100}

        # 1. SIGKILL one pool child mid-job: Celery requeues its job at once.
        time.sleep(2.0)
        child = victim.children()[0]
        os.kill(child, signal.SIGKILL)
        time.sleep(2.0)

        # 2. SIGKILL the whole node (machine off): its unacked jobs must run elsewhere.
        # A heartbeat is up to `heartbeat_s` (2 s) old and a summary takes 0.6 s, so the
        # tags it lists may already be acknowledged: kill only while one is still unacked.
        deadline = time.monotonic() + 30
        while True:
            tags = json.loads(rclient.get(f"tf:hb:{victim.name}") or "{}").get("tags", [])
            if _tags_to_jobs(rclient, tags) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        t_kill = time.monotonic()
        victim.kill()
        # What the dead node still held: announced by it, never acknowledged.
        held = _tags_to_jobs(rclient, tags)
        assert held, "the victim node held no job when killed"
        recovered = d.results_for(held, timeout=60)
        recovery_s = time.monotonic() - t_kill
        print(f"\nwhole node killed holding {len(held)} job(s); they ran elsewhere within "
              f"{recovery_s:.1f} s (visibility timeout: {fleet.config.reliability.visibility_timeout_s} s)")
        assert all(r.ok for r in recovered)
        assert recovery_s < 30

        # 3. Restart the node, as systemd would; the fleet finishes the day.
        fleet.start("local-mac", concurrency=2, name="victim-restarted@test")
        results = d.results_for([h.id for h in handles], timeout=240)
        _account(results, len(jobs), "kill -9")
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        _billed_once(Ledger(rclient, fleet.config), [h.id for h in handles])


def test_host_killed_mid_run_every_job_completes_through_its_fallback(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient, reliability={"breaker_open_s": 120.0}) as fleet:
        for tier in ("local-gpu", "local-mac", "runpod", "paid"):
            fleet.start(tier)
        d = fleet.dispatcher()
        jobs = [{"kind": "code", "prompt": f"Refactor function {i} to remove the race.",
                 "privacy": "confidential" if i % 2 else "internal"} for i in range(60)]
        first = d.submit_many(jobs[:30])
        time.sleep(0.3)
        fleet.sim.down("sim-gpu")
        t_down = time.monotonic()
        d.results_for([h.id for h in first], timeout=120)
        later = d.submit_many(jobs[30:])
        results = d.results_for([h.id for h in first + later], timeout=120)
        _account(results, len(jobs), "host killed")
        assert all(r.ok for r in results)

        ledger = Ledger(rclient, fleet.config)
        for h, job in zip(first + later, jobs, strict=True):
            tiers = {a.tier for a in ledger.job_attempts(h.id)}
            if job["privacy"] == "confidential":
                assert tiers <= LOCAL, (h.id, tiers)
        fell_back = [r for r in results if r.trail[0] == "local-gpu" and len(r.trail) > 1]
        assert fell_back, "no job met the dead host"
        print(f"fell back: {len(fell_back)}; failover seen within "
              f"{time.monotonic() - t_down:.1f} s of the host dying")
        breaker = Breaker(rclient, fleet.config)
        assert breaker.times_opened("sim-gpu") == 1
        # Nothing submitted after the breaker opened waited on the dead host: either the
        # policy routed around it, or the worker skipped it on the open breaker without
        # a single connection attempt.
        for h in later:
            for a in ledger.job_attempts(h.id):
                assert a.host != "sim-gpu", a
                if a.tier == "local-gpu":
                    assert "breaker open" in (a.error or ""), a


def test_confidential_job_parks_while_every_local_host_is_down_then_runs(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient) as fleet:
        for tier in ("local-mac", "local-gpu", "runpod", "paid"):
            fleet.start(tier)
        fleet.sim.down("sim-ollama")
        fleet.sim.down("sim-gpu")
        d = fleet.dispatcher()
        h = d.submit({"kind": "summary", "prompt": "Summarize the board minutes.",
                      "privacy": "confidential"})
        deadline = time.monotonic() + 30
        while d.result(h.id).status is not Status.PARKED:
            assert time.monotonic() < deadline, "job never parked"
            time.sleep(0.1)
        # Parked in our own record, not as a Celery countdown held unacked by a worker
        # (which Redis would redeliver, again and again, once the visibility timeout passed).
        assert rclient.zscore("tf:parked", h.id) is not None
        # The worker acks just after it writes the park record: give it that moment.
        acked_by = time.monotonic() + 5
        while rclient.hlen("unacked") and time.monotonic() < acked_by:
            time.sleep(0.05)
        assert rclient.hlen("unacked") == 0
        time.sleep(2.0)
        assert rclient.hlen("unacked") == 0  # and no redelivery took it back in meanwhile
        assert d.result(h.id).status is Status.PARKED  # still waiting: nowhere allowed is up
        fleet.sim.up("sim-ollama")
        r = d.result(h.id, timeout=60)
        _account([r], 1, "parked")
        assert r.ok and r.tier == "local-mac"
        tiers = [a.tier for a in Ledger(rclient, fleet.config).job_attempts(h.id)]
        assert set(tiers) <= LOCAL, tiers
        assert fleet.sim.counters("sim-runpod").get("run", 0) == 0
        assert fleet.sim.counters("sim-openai").get("chat", 0) == 0


def test_redis_restart_with_aof_loses_nothing(tmp_path: Path) -> None:
    server = EmbeddedRedis(appendonly=True).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        with ModelFleet(tmp_path, server.url, client) as fleet:
            fleet.sim.fault("sim-ollama", "slow", seconds=0.05)
            fleet.start("rules")
            fleet.start("local-mac", concurrency=2)
            d = fleet.dispatcher()
            before = d.submit_many(
                [{"kind": "keyword_route", "input": {"text": f"vpn {i}"}} for i in range(40)]
                + [{"kind": "summary", "prompt": f"Summarize item {i}."} for i in range(40)])
            time.sleep(0.5)
            server.stop()
            time.sleep(1.0)
            server.start()
            after = d.submit_many([{"kind": "summary", "prompt": f"Summarize later {i}."}
                                   for i in range(40)])
            ids = [h.id for h in before + after]
            try:
                results = d.results_for(ids, timeout=60)
            except Exception:
                pending = [i for i, r in zip(ids, d.results.get_many(ids), strict=True)
                           if r is None or r.status.value not in ("succeeded", "failed")]
                print("PENDING", pending[:5], [d.result(i) for i in pending[:3]])
                print("queues", {t: client.llen(t) for t in fleet.config.tiers},
                      "unacked", client.hlen("unacked"), client.hkeys("unacked")[:5])
                print(fleet.dump_logs())
                raise
            _account(results, len(ids), "redis restart")
            assert all(r.ok for r in results)
    finally:
        client.close()
        server.cleanup()


def test_rate_limited_host_and_hanging_host_are_handled_within_their_timeouts(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    with ModelFleet(tmp_path, redis_url, rclient,
                    hosts={"sim-gpu": {"timeout_s": 1.0}}) as fleet:
        for tier in ("local-mac", "local-gpu", "paid"):
            fleet.start(tier)
        d = fleet.dispatcher()
        # 429 with a Retry-After inside the budget: wait, then the same host answers.
        fleet.sim.fault("sim-ollama", "rate_limit", retry_after=1, count=1)
        t0 = time.monotonic()
        limited = d.result(d.submit({"kind": "summary", "prompt": "Summarize: quota"}).id, timeout=30)
        waited = time.monotonic() - t0
        assert limited.ok and limited.trail == ["local-mac"], limited
        assert waited >= 1.0
        # A host that accepts and never answers: the read timeout (1 s) moves the job on.
        fleet.sim.fault("sim-gpu", "hang")
        t0 = time.monotonic()
        hung = d.result(d.submit({"kind": "code", "prompt": "Write a sort function."}).id,
                        timeout=60)
        print(f"\n429 handled in {waited:.1f} s; hang handled in {time.monotonic() - t0:.1f} s "
              f"via {' -> '.join(hung.trail)}")
        _account([limited, hung], 2, "429 and hang")
        assert hung.ok and hung.trail[0] == "local-gpu" and len(hung.trail) > 1


def test_dead_letter_after_the_last_park_then_replayed_from_the_cli(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    from tests.support.harness import cli

    with ModelFleet(tmp_path, redis_url, rclient,
                    reliability={"max_attempts": 2, "park_backoff_s": [0.3]}) as fleet:
        fleet.start("local-mac")
        fleet.start("local-gpu")
        fleet.sim.down("sim-ollama")
        fleet.sim.down("sim-gpu")
        d = fleet.dispatcher()
        h = d.submit({"kind": "summary", "prompt": "Summarize the audit notes.",
                      "privacy": "confidential"})
        r = d.result(h.id, timeout=60)
        assert r.status is Status.DEAD, r
        listed = cli(["dlq", "list", "--json"], fleet.config_path)
        assert listed.returncode == 0, listed.stderr
        [dead] = json.loads(listed.stdout)
        assert dead["id"] == h.id and "parks" in dead["reason"]
        fleet.sim.up("sim-ollama")
        replayed = cli(["dlq", "replay", h.id], fleet.config_path)
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
        r = d.result(h.id, timeout=60)
        _account([r], 1, "dead letter replayed")
        assert r.ok and r.tier == "local-mac"
        assert json.loads(cli(["dlq", "list", "--json"], fleet.config_path).stdout) == []
