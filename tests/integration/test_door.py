"""The door (broker.Door): the messages it builds are kombu's, byte for byte, and a stock
Celery worker runs them; admission through it leaves Redis as store admission does."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from tests.support.harness import ROOT, write_config
from tierfleet.broker import job_digest, send
from tierfleet.config import load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.envelope import Delivery
from tierfleet.errors import JobRejected
from tierfleet.shown import shown_kwargs, task_label
from tierfleet.store import OpenJobs

pytestmark = pytest.mark.integration

JOBS: list[dict[str, Any]] = [
    {"kind": "keyword_route", "input": {"text": "my VPN dropped"}, "workflow": "helpdesk"},
    {"kind": "summary", "prompt": "Summarise: the deploy rolled back at 14:10 — naïve café"},
    {"kind": "summary", "prompt": "secret words", "privacy": "confidential",
     "metadata": {"team": "ops"}},
    {"kind": "dedupe", "input": {"items": ["a", "b", "a"]}, "id": "pré-ticket.7:x"},
]


def _kombu_bytes(d: Dispatcher, delivery: Delivery, r: redis.Redis) -> tuple[bytes, bytes]:
    """What Celery/kombu LPUSH and PUBLISH for ``delivery`` (the reference)."""
    door = d.door
    assert door is not None
    door._prepare()
    sub = r.pubsub()
    sub.subscribe(door._topic)
    sub.get_message(timeout=1)
    send(d.app, delivery)
    msg = r.rpop(delivery.tier)
    event = None
    deadline = time.monotonic() + 5
    while event is None and time.monotonic() < deadline:
        m = sub.get_message(timeout=1)
        if m and m["type"] == "message":
            event = m["data"]
    sub.close()
    assert msg is not None and event is not None
    return msg, event


def _without(raw: bytes | str, *fields: str) -> dict[str, Any]:
    doc = json.loads(raw)
    for f in fields:
        doc["properties"].pop(f, None)
    return doc


def test_the_door_builds_what_kombu_sends(tmp_path: Path, redis_url: str) -> None:
    config = load_config(write_config(tmp_path / "fleet.toml", redis_url))
    d = Dispatcher(config)
    r = redis.Redis.from_url(redis_url)
    assert d.door is not None
    for data in JOBS:
        job, route = d.prepare(data)
        delivery = Delivery(job=job, route=route)
        ref_msg, ref_event = _kombu_bytes(d, delivery, r)
        kwargs = delivery.to_kwargs()
        ref = json.loads(ref_msg)
        ref_ev_body = json.loads(base64.b64decode(json.loads(ref_event)["body"]))
        # The event's Lamport clock, time and UTC offset are the moment's: taken from kombu's.
        msg, event = d.door.encode(kwargs, json.dumps(kwargs), delivery.tier,
                                   clock=ref_ev_body["clock"],
                                   now=ref_ev_body["timestamp"], offset=ref_ev_body["utcoffset"],
                                   reply_to=ref["properties"]["reply_to"],
                                   shown=shown_kwargs(delivery, d.config),
                                   shadow=task_label(delivery))
        # Byte for byte, once the random delivery tag is the same.
        tag = ref["properties"]["delivery_tag"]
        mine = json.loads(msg)
        assert msg.replace(mine["properties"]["delivery_tag"], tag).encode() == ref_msg
        ev_tag = json.loads(ref_event)["properties"]["delivery_tag"]
        my_ev_tag = json.loads(event)["properties"]["delivery_tag"]
        assert event.replace(my_ev_tag, ev_tag).encode() == ref_event
        assert job_digest(kwargs["job"]) == OpenJobs.digest(job)


def test_door_admission_leaves_redis_as_store_admission(tmp_path: Path, redis_url: str) -> None:
    config = load_config(write_config(tmp_path / "fleet.toml", redis_url))
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    fast, slow = Dispatcher(config), Dispatcher(config, fast_publish=False)
    assert fast.door is not None and slow.door is None
    for i, data in enumerate(JOBS):
        job, route = fast.prepare({**data, "id": f"door-{i}"})
        d1 = Delivery(job=job, route=route)
        assert fast.door.admit([d1]) == ["new"]
        state = {k: r.dump(k) for k in (f"tf:result:door-{i}", f"tf:digest:door-{i}")}
        body = r.hget("tf:open:body", f"door-{i}")
        r.delete(*state, "tf:open:body")
        r.zrem("tf:open", f"door-{i}")
        assert slow.open.admit([d1]) == ["new"]
        assert {k: r.dump(k) for k in state} == state
        assert r.hget("tf:open:body", f"door-{i}") == body
        # The same job again is 'same' and is not published twice; another body conflicts.
        depth = r.llen(d1.tier)
        assert fast.door.admit([d1]) == ["same"]
        assert r.llen(d1.tier) == depth
        with pytest.raises(JobRejected, match="already exists"):
            fast.submit({**data, "id": f"door-{i}", "workflow": "another"})
        assert r.llen(d1.tier) == depth


def test_a_stock_celery_worker_runs_what_the_door_sends(tmp_path: Path, redis_url: str) -> None:
    config = load_config(write_config(tmp_path / "fleet.toml", redis_url))
    d = Dispatcher(config)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    handles = [d.submit(JOBS[0]), *d.submit_many(JOBS[1:])]
    tiers = sorted({h.route.tier for h in handles})
    # kombu decodes every queued message as a worker would, before the worker runs them.
    with Connection(d.app.conf.broker_url) as conn:
        for t in tiers:
            q = conn.SimpleQueue(t, no_ack=False)
            for _ in range(r.llen(t)):
                m = q.get(timeout=2)
                assert m.headers["task"] == "tierfleet.run_job"
                assert m.decode()[1]["job"]["id"] in {h.id for h in handles}
                m.requeue()
            q.close()
    env = {**os.environ, "STOCK_BROKER_URL": redis_url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    log = (tmp_path / "stock.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.support.stock_celery",
                             "worker", "-Q", ",".join(tiers), "-c", "1", "-P", "solo",
                             "--without-mingle", "--without-gossip", "-n", f"stock-{os.getpid()}@t"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(r.exists(f"stock:got:{h.id}") for h in handles):
                break
            assert proc.poll() is None, (tmp_path / "stock.log").read_text()
            time.sleep(0.2)
        for h in handles:
            got = json.loads(r.get(f"stock:got:{h.id}") or "null")
            assert got is not None, (tmp_path / "stock.log").read_text()[-3000:]
            assert got["kwargs"]["job"]["id"] == h.id
            assert Delivery.from_kwargs(got["kwargs"]).route == h.route
            assert got["argsrepr"] == "()"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
