"""The fault run: every promise under attack at once, counted.

Real Celery workers (subprocesses) on a real redis-server with an AOF, simulated hosts
speaking their real wire protocols over loopback. While a day of mixed jobs runs, a
chaos thread SIGKILLs pool children and whole worker nodes at random points of their
deliveries, kills one host and hangs another, SIGKILLs Redis and restarts it, and
producers submit the same ids twice at once. Then the run must converge:

* lost 0: every job whose submit returned reaches a final status;
* stuck 0: at no point after convergence is a job non-final with no message anywhere;
* billed: the hosts' generation calls equal the ledger's host-call records;
* confidential jobs ran on local tiers only.

A second test crashes Redis the way a machine crash does under ``appendfsync
everysec``: the AOF loses its last second. Jobs acknowledged before that second are
all final; jobs acknowledged inside it may be unknown to Redis (exactly what the fsync
policy allows, and counted), and nothing is left non-final for ever.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.chaos import (
    FINAL,
    RedisProcess,
    account,
    billing_mismatch,
    host_calls,
    kill_child,
    message_ids,
    pick,
    statuses,
    wait_final,
)
from tests.support.harness import ModelFleet
from tierfleet import keys
from tierfleet.errors import JobRejected
from tierfleet.ledger import Ledger

LOCAL = {"rules", "local-mac", "local-gpu"}


def _jobs(n: int, tag: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        k = i % 10
        jid = f"{tag}-{i:04d}"
        if k < 4:
            out.append({"id": jid, "kind": "keyword_route", "input": {"text": f"vpn drops {i}"}})
        elif k < 6:
            out.append({"id": jid, "kind": "summary", "prompt": f"Summarize note {i}: deploy slipped.",
                        "workflow": "inbox", "privacy": "confidential" if i % 3 == 0 else "internal"})
        elif k < 9:
            out.append({"id": jid, "kind": "code", "prompt": f"Write function {i} in Python.",
                        "privacy": "confidential" if i % 2 else "internal"})
        else:
            out.append({"id": jid, "kind": "writing", "prompt": f"Write customer note {i}.",
                        "tier": "paid"})
    return out


def _submit_retrying(d: Any, job: dict[str, Any], acked: dict[str, float], lock: threading.Lock,
                     deadline: float) -> None:
    """A producer that retries a failed submit with the same id, as a careful client does."""
    while time.monotonic() < deadline:
        try:
            d.submit(job)
        except JobRejected:
            raise
        except Exception:
            time.sleep(0.2)
            continue
        with lock:
            acked.setdefault(job["id"], time.monotonic())
        return


def test_chaos_kill9_hosts_redis_and_duplicate_ids(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    server = RedisProcess(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        with ModelFleet(tmp_path, server.url, client,
                        reliability={"breaker_open_s": 3.0, "park_backoff_s": [0.5, 1.0, 2.0],
                                     "max_attempts": 30},
                        hosts={"sim-gpu": {"timeout_s": 1.0}}) as fleet:
            fleet.sim.fault("sim-ollama", "slow", seconds=0.2)
            fleet.start("rules", concurrency=2)
            nodes = [fleet.start("local-mac", concurrency=2, name=f"mac{i}@chaos") for i in (1, 2)]
            nodes.append(fleet.start("local-gpu", name="gpu@chaos"))
            fleet.start("runpod")
            fleet.start("paid")
            d = fleet.dispatcher()
            jobs = _jobs(240, "chaos")
            acked: dict[str, float] = {}
            lock = threading.Lock()
            stop = threading.Event()
            actions: list[str] = []

            def chaos() -> None:
                redis_killed = False
                while not stop.wait(rng.uniform(0.6, 1.4)):
                    roll = rng.random()
                    node = pick(rng, nodes)
                    if roll < 0.35:
                        pid = kill_child(node.children(), rng)
                        actions.append(f"kill -9 child {pid} of {node.name}")
                    elif roll < 0.6:
                        node.kill()
                        actions.append(f"kill -9 node {node.name}")
                        time.sleep(rng.uniform(0.2, 1.0))
                        node.start(client)
                        node.expected_exit = False
                    elif roll < 0.72:
                        fleet.sim.down("sim-gpu")
                        actions.append("host sim-gpu down")
                        time.sleep(1.5)
                        fleet.sim.up("sim-gpu")
                    elif roll < 0.84:
                        fleet.sim.fault("sim-ollama", "hang", count=2)
                        actions.append("host sim-ollama hangs (2 requests)")
                    elif not redis_killed:
                        redis_killed = True
                        server.crash()
                        actions.append("kill -9 redis")
                        time.sleep(0.8)
                        server.start()

            t = threading.Thread(target=chaos, daemon=True)
            t.start()
            deadline = time.monotonic() + 120
            # Producers: half one at a time (some ids twice at once from two threads), the
            # rest in batches that repeat an id.
            singles, batched = jobs[:120], jobs[120:]
            twice = singles[::8]
            def produce(js: list[dict[str, Any]]) -> None:
                for j in js:
                    _submit_retrying(d, j, acked, lock, deadline)
                    time.sleep(rng.uniform(0.02, 0.15))  # a day spread over the chaos

            threads = [threading.Thread(target=produce, args=(js,)) for js in (singles, twice)]
            for th in threads:
                th.start()
            for i in range(0, len(batched), 20):
                batch = batched[i:i + 20]
                batch = [*batch, batch[0]]  # the same job twice in one batch
                while time.monotonic() < deadline:
                    try:
                        d.submit_many(batch)
                    except JobRejected:
                        raise
                    except Exception:
                        time.sleep(0.2)
                        continue
                    with lock:
                        for j in batch:
                            acked.setdefault(j["id"], time.monotonic())
                    break
                time.sleep(1.5)
            for th in threads:
                th.join()
            time.sleep(6.0)  # let the chaos run on over the tail of the day
            stop.set()
            t.join()
            fleet.sim.clear()
            fleet.sim.up("sim-gpu")
            for node in nodes:  # whatever the chaos left dead comes back, as systemd would
                if node.proc is None or node.proc.poll() is not None:
                    node.start(client)
                    node.expected_exit = False

            ids = sorted(acked)
            wait_final(client, fleet.config, ids, timeout=240)
            acc = account(client, fleet.config, ids, "chaos")
            # A call whose worker was killed before its record is billed by the reaper's
            # next sweep once the owner is seen dead (dead_after_s after the call): a job
            # redelivered at once (a pool child's death requeues it) can be final before.
            # The promise is about the ledger after that sweep, so count after it.
            inflight = keys.inflight(fleet.config)
            settle_by = time.monotonic() + 4 * fleet.config.reliability.dead_after_s + 10
            while client.hlen(inflight) and time.monotonic() < settle_by:
                time.sleep(0.25)
            print("\n" + "\n".join(actions))
            print(acc.line())
            ledger = Ledger(client, fleet.config)
            calls = host_calls(fleet.sim)
            recorded = 0
            for job in jobs:
                if job["id"] not in acked:
                    continue
                attempts = ledger.job_attempts(job["id"])
                recorded += sum(1 for a in attempts if a.host)
                if job.get("privacy") == "confidential":
                    assert {a.tier for a in attempts} <= LOCAL, (job["id"], attempts)
            print(f"host calls: {calls}  ledger host-call records: {recorded}")
            mismatch = billing_mismatch(fleet.sim, ledger, client, fleet.config, jobs)
            if mismatch or calls != recorded:
                print("\n".join(["[billed] per-job mismatch:", *mismatch]))
            assert len(ids) == len(jobs), "every job was acknowledged in the end"
            assert not acc.lost, (acc.line(), acc.lost[:5], fleet.dump_logs()[-4000:])
            assert not acc.stuck, acc.stuck[:5]
            assert calls == recorded, ("a host call is missing from the ledger, or billed twice",
                                       mismatch, fleet.dump_logs()[-4000:])
    finally:
        client.close()
        server.stop()


def test_redis_machine_crash_cuts_the_last_second_of_aof_and_every_job_converges(
        tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", appendfsync="everysec").start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        with ModelFleet(tmp_path, server.url, client) as fleet:
            fleet.sim.fault("sim-ollama", "slow", seconds=0.05)
            fleet.start("rules")
            fleet.start("local-mac", concurrency=2)
            d = fleet.dispatcher()
            acked: dict[str, float] = {}
            failed: list[str] = []
            stop = threading.Event()

            def produce() -> None:
                i = 0
                while not stop.is_set():
                    jid = f"aof-{i:05d}"
                    job = ({"id": jid, "kind": "keyword_route", "input": {"text": f"vpn {i}"}}
                           if i % 2 else {"id": jid, "kind": "summary", "prompt": f"Summarize {i}."})
                    try:
                        d.submit(job)
                        acked[jid] = time.monotonic()
                    except Exception:
                        failed.append(jid)
                    i += 1
                    server.sample()
                    time.sleep(0.01)

            t = threading.Thread(target=produce, daemon=True)
            t.start()
            time.sleep(3.0)
            t_crash = time.monotonic()
            cut = server.crash(cut_s=1.0)
            stop.set()
            time.sleep(0.5)
            server.start()
            # After the restart: a submit caught by the crash rides it out on the publish
            # retries (up to ~50 s) and lands now, as it would for a real producer.
            t.join()
            ids = sorted(acked)
            window = {i for i, ts in acked.items() if ts >= t_crash - 1.5}
            before = [i for i in ids if i not in window]
            # Whatever survived the cut must converge: final, or unknown to Redis.
            deadline = time.monotonic() + 120
            while True:
                st = statuses(client, fleet.config, ids)
                open_ = [i for i, s in st.items() if s not in FINAL and s != "absent"]
                if not open_ or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            absent = [i for i, s in st.items() if s == "absent"]
            have = message_ids(client, fleet.config)
            print(f"\n[aof cut] {cut} bytes cut; acknowledged {len(ids)}, of them {len(window)} in "
                  f"the last 1.5 s; final {sum(s in FINAL for s in st.values())}; unknown to Redis "
                  f"{len(absent)} (all inside the fsync window); left open {len(open_)}; "
                  f"stuck {sum(1 for i in open_ if i not in have)}")
            assert cut > 0, "the crash cut nothing: the test did not test the cut"
            assert not open_, ("non-final jobs never converged", open_[:5])
            assert set(absent) <= window, sorted(set(absent) - window)[:5]
            assert all(st[i] in FINAL for i in before)
            # The producer can tell: a job Redis lost reads as unknown, not pending for ever.
            for i in absent[:3]:
                r = d.result(i)
                assert r.status.value == "unknown", r
    finally:
        client.close()
        server.stop()
