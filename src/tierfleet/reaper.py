"""Bring back jobs that would otherwise wait: those of dead worker nodes, and parked ones.

Dead nodes. Celery on Redis keeps a delivered message in the ``unacked`` hash
until it is acknowledged; if the whole worker node dies (SIGKILL of the main
process, power loss) nobody acknowledges it and kombu restores it only after
the visibility timeout (an hour here, because it must exceed the longest job).
Every worker therefore writes a heartbeat to Redis every ``heartbeat_s`` naming
the delivery tags it holds. A message that has sat unacked for longer than
``dead_after_s`` and that no live worker claims belongs to a dead node: the
reaper puts it back on its queue with kombu's own restore (the same code the
visibility-timeout sweep runs). The timeout itself stays long, so slow jobs on
live workers are never run twice.

Parked jobs. Jobs with no allowed tier up sit in a sorted set by due time; the
reaper re-enqueues the due ones. Long waits never become Celery countdowns.

Every worker runs the reaper in a thread (one at a time fleet-wide, under a
Redis lock); ``tierfleet reaper`` runs it standalone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from celery import Celery

from .broker import key, send
from .config import FleetConfig
from .store import Parking

log = logging.getLogger("tierfleet.reaper")

UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def heartbeat_key(config: FleetConfig, node: str) -> str:
    return key(config, "hb", node)


def write_heartbeat(client: redis.Redis, config: FleetConfig, node: str, queues: list[str],
                    tags: Iterable[str], concurrency: int) -> None:
    body = {
        "node": node, "queues": queues, "tags": sorted(set(tags)), "pid": os.getpid(),
        "host": socket.gethostname(), "concurrency": concurrency, "ts": time.time(),
    }
    ttl_ms = int(config.reliability.dead_after_s * 1000)
    client.set(heartbeat_key(config, node), json.dumps(body), px=ttl_ms)


def live_workers(client: redis.Redis, config: FleetConfig) -> list[dict[str, Any]]:
    keys = list(client.scan_iter(match=heartbeat_key(config, "*"), count=500))
    if not keys:
        return []
    return [json.loads(v) for v in client.mget(keys) if v]


class Reaper:
    def __init__(self, config: FleetConfig, client: redis.Redis, app: Celery) -> None:
        self.config = config
        self.r = client
        self.app = app
        self.parking = Parking(client, config)
        self.lock_key = key(config, "reaper", "lock")
        self.restored_total = 0
        self.unparked_total = 0
        # After a Redis outage every heartbeat has lapsed; give live workers time to
        # beat again before calling anyone dead.
        self._redis_ok_since = time.monotonic()

    # -- dead nodes --------------------------------------------------------------------

    def orphans(self, now: float | None = None) -> list[str]:
        now = now or time.time()
        grace = self.config.reliability.dead_after_s
        old = self.r.zrangebyscore(UNACKED_INDEX, 0, now - grace)
        if not old:
            return []
        held: set[str] = set()
        for w in live_workers(self.r, self.config):
            held.update(w.get("tags", []))
        return [t for t in old if t not in held]

    def restore_orphans(self) -> int:
        if time.monotonic() - self._redis_ok_since < self.config.reliability.dead_after_s:
            return 0
        tags = self.orphans()
        if not tags:
            return 0
        with self.app.connection_for_write() as conn:
            qos = conn.default_channel.qos
            for tag in tags:
                # kombu's own restore: moves the payload back to its queue, marks it
                # redelivered, and drops it from the unacked hash in one transaction.
                qos.restore_by_tag(tag, leftmost=False)
        self.restored_total += len(tags)
        log.warning("restored %d job(s) held by dead worker nodes", len(tags))
        self.r.incrby(key(self.config, "stats", "restored"), len(tags))
        return len(tags)

    # -- parked jobs -------------------------------------------------------------------

    def unpark_due(self, publish: Callable[[dict[str, Any], str], None]) -> int:
        n = 0
        for job_id, msg in self.parking.due():
            if not self.parking.claim(job_id):
                continue  # another reaper took it
            body = {k: msg[k] for k in ("job", "route", "trail", "attempt", "parks") if k in msg}
            publish(body, body["route"]["tier"])
            self.parking.unpark(job_id)
            n += 1
        self.unparked_total += n
        return n

    # -- loop --------------------------------------------------------------------------

    def tick(self) -> tuple[int, int]:
        """One sweep, if no other reaper holds the lock. Returns (restored, unparked)."""
        ttl = max(int(self.config.reliability.heartbeat_s * 5), 5)
        if not self.r.set(self.lock_key, str(os.getpid()), nx=True, ex=ttl):
            return 0, 0
        try:
            restored = self.restore_orphans()
            unparked = self.unpark_due(self._publish)
            return restored, unparked
        finally:
            self.r.delete(self.lock_key)

    def _publish(self, msg: dict[str, Any], tier: str) -> None:
        send(self.app, msg, tier)

    def run_forever(self, stop: threading.Event, interval: float | None = None) -> None:
        interval = interval or self.config.reliability.heartbeat_s
        while not stop.is_set():
            try:
                self.tick()
            except redis.RedisError as exc:
                self._redis_ok_since = time.monotonic()
                log.warning("reaper: redis unavailable (%s); retrying", exc)
            except Exception:
                log.exception("reaper sweep failed; retrying")
            stop.wait(interval)
