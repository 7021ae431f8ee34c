"""Class 8 of issue #11: survive losing the Redis primary (Sentinel failover).

Real processes: a primary, one replica, three ``redis-server --sentinel``; workers and
a producer that know only the sentinels. The primary is SIGKILLed mid-run; Sentinel
promotes the replica; nobody is restarted.

The promise counted here: with ``reliability.durable_submit = "replicas"`` a submit
returns only once its job reached the replica (WAIT 1 on this Redis 7.0), so every
acknowledged job survives the promotion: lost 0, stuck 0. Submits that raised during
the failover were refused to their producer and are not counted in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.harness import ModelFleet, Worker
from tests.support.redis_procs import Producer, SentinelGroup, wait_final
from tierfleet.config import FleetConfig
from tierfleet.connections import redis_client
from tierfleet.dispatch import Dispatcher
from tierfleet.lab.sim import write_config as write_sim_config

pytestmark = pytest.mark.integration


def _batch(n: int) -> list[dict[str, Any]]:
    return [{"kind": "summary", "prompt": f"Summarize failover note {n}-{i}."} for i in range(2)] + [
        {"kind": "keyword_route", "input": {"text": f"vpn ticket {n}"}}]


def test_primary_killed_sentinel_promotes_a_replica_nothing_acknowledged_lost(
        tmp_path: Path) -> None:
    with SentinelGroup(replicas=1) as group:
        first = group.primary_port()
        seed = redis.Redis(port=first, decode_responses=True)
        workers: list[Worker] = []
        # ModelFleet for its simulated hosts and config; its URL is swapped for the
        # sentinels before any worker or producer starts.
        with ModelFleet(tmp_path, f"redis://127.0.0.1:{first}/0", seed) as fleet:
            fleet.sim.fault("sim-ollama", "slow", seconds=0.1)
            data = fleet.config.model_dump()
            data.update(redis_url=group.url, redis={"sentinel_master": group.master_name})
            data["reliability"] = {**data["reliability"], "durable_submit": "replicas",
                                   "durable_replicas": 1, "durable_timeout_ms": 2000}
            config = FleetConfig(**data)
            path = write_sim_config(config, tmp_path / "fleet-sentinel.toml")
            client = redis_client(config)
            try:
                workers = [Worker("local-mac", path, concurrency=2).start(client),
                           Worker("rules", path).start(client)]
                d = Dispatcher(config)
                producer = Producer(d.submit_many, _batch, pause_s=0.1)
                producer.start()
                time.sleep(3.0)
                acked_before = len(producer.acked)
                group.kill9(first)  # the primary's machine dies
                promoted = group.wait_promoted(first, timeout=30)
                # The new primary has no replica left, and durable_submit = "replicas"
                # refuses (SubmitNotDurable) what no replica holds: the dead machine
                # comes back as a replica, as an operator would bring it back.
                group._start_data(first, promoted)
                # Jobs in after the failover: wait for a few, however slow the machine is.
                resume_by = time.monotonic() + 60
                while len(producer.acked) - acked_before < 5 and time.monotonic() < resume_by:
                    time.sleep(0.2)
                producer.stop()
                ids = producer.acked
                after = len(ids) - acked_before
                out, not_final = wait_final(d.results.get_many, ids, timeout=120)
                lost = len(ids) - sum(out.values())
                primary = redis.Redis(port=group.primary_port(), decode_responses=True)
                # An ack sent to the dying primary can be lost: that delivery stays in
                # unacked until the reaper restores it and a worker acks the (final) job.
                drain_by = time.monotonic() + 60
                while True:
                    queued = sum(primary.llen(t) for t in config.tiers)
                    unacked = primary.hlen("unacked")
                    if (queued == 0 and unacked == 0) or time.monotonic() > drain_by:
                        break
                    time.sleep(0.5)
                print(f"\n[sentinel failover {first} -> {promoted}] jobs in: {len(ids)} "
                      f"(before kill {acked_before}, after {after}; refused to producer "
                      f"{producer.refused} {dict(producer.errors)})  jobs out: "
                      f"{sum(out.values())} {out}  lost: {lost}  stuck: {len(not_final)} "
                      f"(queued {queued}, unacked {unacked})  worker exits: "
                      f"{[w.proc.poll() for w in workers if w.proc]}")
                if not_final:
                    for w in workers:
                        print(f"--- {w.name}\n{w.log()[-3000:]}")
                assert all(w.proc is not None and w.proc.poll() is None for w in workers), \
                    "workers follow the failover without a restart"
                assert after > 0, "the producer submits again after the failover"
                assert lost == 0, f"{lost} acknowledged job(s) lost"
                assert not not_final, f"{len(not_final)} stuck, first {not_final[:3]}"
                assert queued == 0 and unacked == 0
            finally:
                for w in workers:
                    w.stop()
                client.close()
