"""Job leases and host-call notes left by a live process: held while it runs the job only.

After Redis comes back without its last second of AOF, a lease can survive whose release
was lost: its owner is alive and beating but finished the job long ago. Before, every
later delivery of that job stepped aside as a duplicate until the lease expired (the task
time limit plus a minute), so the job sat open and undone. Now a live owner holds a lease
only while its heartbeat lists the job; the same goes for a call note the reaper settles.
"""

from __future__ import annotations

import json
import os
import time

import fakeredis
import pytest

from tierfleet import keys
from tierfleet.config import FleetConfig
from tierfleet.heartbeats import LIST_GRACE_S, holds, write_heartbeat
from tierfleet.ledger import InFlight, Ledger
from tierfleet.store import Leases

NODE = "mac-1@box"
OWNER = f"{NODE}|{os.getpid()}|1"


def left_lease(r: fakeredis.FakeRedis, config: FleetConfig, job_id: str, at: float) -> None:
    token = {"owner": OWNER, "attempt": 1, "at": at, "nonce": "left"}
    r.set(keys.lease(config, job_id), json.dumps(token))


def beat(r: fakeredis.FakeRedis, config: FleetConfig, jobs: list[str] | None) -> None:
    write_heartbeat(r, config, NODE, ["local-mac"], [], 2, pids=[os.getpid()], jobs=jobs)


@pytest.fixture
def leases(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> Leases:
    return Leases(fake_redis, core_config)


def test_a_live_owner_running_the_job_keeps_its_lease(
        leases: Leases, core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    left_lease(fake_redis, core_config, "j1", time.time() - 60)
    beat(fake_redis, core_config, ["j1", "j2"])
    assert leases.acquire("j1", "other@box|1|1", 1, wait_s=0) is None


def test_a_lease_its_live_owner_no_longer_runs_is_taken_over(
        leases: Leases, core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    left_lease(fake_redis, core_config, "j1", time.time() - 60)
    beat(fake_redis, core_config, ["j2"])  # alive, beating, running something else
    token = leases.acquire("j1", "other@box|1|1", 1, wait_s=0)
    assert token is not None
    assert json.loads(fake_redis.get(keys.lease(core_config, "j1")))["owner"] == "other@box|1|1"


def test_a_lease_taken_just_before_the_last_heartbeat_is_not_taken_over(
        leases: Leases, core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    # The heartbeat's snapshot may predate the job by a moment: within the grace it counts.
    left_lease(fake_redis, core_config, "j1", time.time() - LIST_GRACE_S / 4)
    beat(fake_redis, core_config, [])
    assert leases.acquire("j1", "other@box|1|1", 1, wait_s=0) is None


def test_a_lease_of_a_dead_node_is_taken_over(
        leases: Leases, core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    left_lease(fake_redis, core_config, "j1", time.time())
    assert leases.acquire("j1", "other@box|1|1", 1, wait_s=0) is not None


def test_a_node_that_lists_no_jobs_holds_every_lease_it_beats_for(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    beat(fake_redis, core_config, None)  # a node from before job lists
    assert holds(fake_redis, core_config, OWNER, "j1", time.time() - 60)
    assert not holds(fake_redis, core_config, f"{NODE}|{os.getpid() + 1}|1", "j1",
                     time.time() - 60)


def _note(fake_redis: fakeredis.FakeRedis, core_config: FleetConfig, job_id: str, ts: float) -> str:
    note = {"job_id": job_id, "attempt": 1, "workflow": "default", "kind": "summary",
            "tier": "local-mac", "host": "ollama", "model": "llama3.1:8b", "privacy": "internal",
            "owner": OWNER, "tokens_in": 12, "fallbacks": 0, "ts": ts, "deadline": ts + 3600}
    call = f"call-{job_id}"
    fake_redis.hset(keys.inflight(core_config), call, json.dumps(note))
    return call


def test_a_call_note_its_live_owner_no_longer_runs_is_settled_now(
        core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> None:
    old = time.time() - core_config.reliability.dead_after_s - 5
    _note(fake_redis, core_config, "done", old)
    _note(fake_redis, core_config, "running", old)
    beat(fake_redis, core_config, ["running"])
    ledger = Ledger(fake_redis, core_config, write_jsonl=False)

    assert InFlight(fake_redis, core_config).settle(ledger) == 1

    assert [(a.outcome, a.call) for a in ledger.job_attempts("done")] == [("lost_call", "call-done")]
    assert ledger.job_attempts("running") == []
    assert list(fake_redis.hkeys(keys.inflight(core_config))) == ["call-running"]
