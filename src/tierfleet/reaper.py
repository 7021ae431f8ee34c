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

import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from celery import Celery

from . import keys
from .broker import send
from .config import FleetConfig
from .envelope import Delivery
from .heartbeats import heartbeat_key, live_workers, write_heartbeat
from .store import Parking

__all__ = ["Reaper", "heartbeat_key", "live_workers", "write_heartbeat"]  # heartbeats' old home

log = logging.getLogger("tierfleet.reaper")


class Reaper:
    """Brings back deliveries of dead worker nodes and parked jobs that are due (see the module doc).

    Every worker runs one in a thread and ``tierfleet reaper`` runs it alone; the
    ``P:reaper:lock`` key lets one sweep run at a time fleet-wide. It reads kombu's
    ``unacked_index`` and the heartbeats, restores orphans with kombu's own restore,
    claims due entries of :class:`~tierfleet.store.Parking` and republishes them,
    and counts restores in ``P:stats:restored``. Guarantees: a delivery a live node
    claims is never restored, and a parked job is republished by one reaper only.
    """

    def __init__(self, config: FleetConfig, client: redis.Redis, app: Celery) -> None:
        self.config = config
        self.redis = client
        self.app = app
        self.parking = Parking(client, config)
        self.lock_key = keys.reaper_lock(config)
        self.restored_total = 0
        self.unparked_total = 0
        # After a Redis outage every heartbeat has lapsed; give live workers time to
        # beat again before calling anyone dead.
        self._redis_ok_since = time.monotonic()

    def orphans(self, now: float | None = None) -> list[str]:
        now = now or time.time()
        grace = self.config.reliability.dead_after_s
        old = self.redis.zrangebyscore(keys.UNACKED_INDEX, 0, now - grace)
        if not old:
            return []
        held: set[str] = set()
        for w in live_workers(self.redis, self.config):
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
        self.redis.incrby(keys.stats(self.config, "restored"), len(tags))
        return len(tags)

    def unpark_due(self, publish: Callable[[Delivery], None]) -> int:
        n = 0
        for job_id, delivery in self.parking.due():
            if not self.parking.claim(job_id):
                continue  # another reaper took it
            publish(delivery)
            self.parking.unpark(job_id)
            n += 1
        self.unparked_total += n
        return n

    def tick(self) -> tuple[int, int]:
        """One sweep, if no other reaper holds the lock. Returns (restored, unparked)."""
        ttl = max(int(self.config.reliability.heartbeat_s * 5), 5)
        if not self.redis.set(self.lock_key, str(os.getpid()), nx=True, ex=ttl):
            return 0, 0
        try:
            restored = self.restore_orphans()
            unparked = self.unpark_due(self._publish)
            return restored, unparked
        finally:
            self.redis.delete(self.lock_key)

    def _publish(self, delivery: Delivery) -> None:
        send(self.app, delivery)

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
