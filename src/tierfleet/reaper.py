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
reaper takes the due ones out (atomically) and re-enqueues them. Long waits never
become Celery countdowns.

Open jobs with no message. Some losses leave no trace a sweep of ``unacked`` can
see: kombu pops a message (BRPOP) before it writes it to ``unacked``, so a worker
killed in between holds nothing; a publish can be lost with Redis's last second of
AOF. Every job that is not final is therefore *open* (:class:`~tierfleet.store.OpenJobs`)
with a copy of its latest delivery. The repair sweep looks at open jobs unchanged
for ``repair_after_s``; one that has no message in any tier's queue, in ``unacked``
or in the parked set, in two sweeps ``repair_every_s`` apart, is sent again from its
copy (counted in ``P:stats:repaired``), or dead-lettered with its reason when no
copy survived. Duplicates this may cause are absorbed like any redelivery.

Every worker runs the reaper in a thread (one at a time fleet-wide, under a
Redis lock); ``tierfleet reaper`` runs it standalone.
"""

from __future__ import annotations

import contextlib
import json
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
from .jobs import Result, Status
from .ledger import InFlight, Ledger
from .store import OpenJobs, Parking, ResultStore

__all__ = ["Reaper", "heartbeat_key", "live_workers", "write_heartbeat"]  # heartbeats' old home

log = logging.getLogger("tierfleet.reaper")


class Reaper:
    """Brings back deliveries of dead worker nodes and parked jobs that are due (see the module doc).

    Every worker runs one in a thread and ``tierfleet reaper`` runs it alone; the
    ``P:reaper:lock`` key lets one sweep run at a time fleet-wide. It reads kombu's
    ``unacked_index`` and the heartbeats, restores orphans with kombu's own restore,
    takes due entries of :class:`~tierfleet.store.Parking` and republishes them,
    repairs open jobs that have no message anywhere, and counts restores and repairs
    in ``P:stats:restored`` / ``P:stats:repaired``. Guarantees: a delivery a live node
    claims is never restored; a parked job is republished by one reaper only; every
    open job converges (final, or sent again) within about ``repair_after_s`` plus two
    ``repair_every_s``.
    """

    def __init__(self, config: FleetConfig, client: redis.Redis, app: Celery) -> None:
        self.config = config
        self.redis = client
        self.app = app
        self.parking = Parking(client, config)
        self.open = OpenJobs(client, config)
        self.results = ResultStore(client, config)
        self.ledger = Ledger(client, config)
        self.inflight = InFlight(client, config)
        self.lock_key = keys.reaper_lock(config)
        self.repaired_total = 0
        self._last_repair = 0.0
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
        """Take the due parked jobs out and publish them (take first: see Parking.take_due)."""
        n = 0
        for delivery in self.parking.take_due():
            publish(delivery)
            n += 1
        self.unparked_total += n
        return n

    def present(self) -> set[str]:
        """Ids of every job that has a message: a tier's queue, ``unacked``, the parked set."""
        ids: set[str] = set()
        for name in keys.queue_lists(self.config):
            start = 0
            while True:
                page = self.redis.lrange(name, start, start + 999)
                for raw in page:
                    with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
                        ids.add(json.loads(raw)["headers"]["id"])
                if len(page) < 1000:
                    break
                start += 1000
        for raw in self.redis.hvals(keys.UNACKED):
            with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
                ids.add(json.loads(raw)[0]["headers"]["id"])
        ids.update(self.redis.zrange(self.parking.parked_index, 0, -1))
        return ids

    def repair(self, publish: Callable[[Delivery], None], now: float | None = None) -> int:
        """Send again every open job with no message anywhere (see the module doc)."""
        rel = self.config.reliability
        now = time.time() if now is None else now
        if now - self._last_repair < rel.repair_every_s:
            return 0
        self._last_repair = now
        suspects_key = keys.open_suspects(self.config)
        candidates = self.open.older_than(rel.repair_after_s)
        if not candidates:
            self.redis.delete(suspects_key)
            return 0
        present = self.present()
        missing = [c for c in candidates if c not in present]
        seen = {k: float(v) for k, v in self.redis.hgetall(suspects_key).items()}
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(suspects_key)
        repaired = 0
        for job_id in missing:
            first_seen = seen.get(job_id)
            if first_seen is None or now - first_seen < rel.repair_every_s * 0.9:
                pipe.hset(suspects_key, job_id, str(first_seen or now))
                continue
            repaired += self._repair_one(job_id, publish)
        pipe.execute()
        if repaired:
            log.warning("repaired %d open job(s) that had no message anywhere", repaired)
        return repaired

    def _repair_one(self, job_id: str, publish: Callable[[Delivery], None]) -> int:
        stored = self.results.get(job_id)
        if stored is not None and stored.finished:
            self.open.close(job_id)  # final already (an older worker did not close it)
            return 0
        delivery = self.open.body(job_id)
        if delivery is None:
            self.results.save(Result(job_id=job_id, status=Status.DEAD,
                                     error="lost: no message and no kept copy of the job"))
            self.redis.incr(keys.stats(self.config, "repaired_dead"))
            return 1
        self.open.update(delivery)  # a fresh change time: not a candidate again at once
        publish(delivery.repaired())
        self.redis.incr(keys.stats(self.config, "repaired"))
        self.repaired_total += 1
        return 1

    def tick(self) -> tuple[int, int]:
        """One sweep, if no other reaper holds the lock. Returns (restored, unparked)."""
        ttl = max(int(self.config.reliability.heartbeat_s * 5), 5)
        if not self.redis.set(self.lock_key, str(os.getpid()), nx=True, ex=ttl):
            return 0, 0
        try:
            restored = self.restore_orphans()
            unparked = self.unpark_due(self._publish)
            if self.repair(self._publish) >= 0:
                self.inflight.settle(self.ledger)
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
