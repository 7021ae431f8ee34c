"""Job results keyed by job id, plus the parked-jobs record and the dead-letter queue.

Results are upserts keyed by job id: a job delivered twice (after a SIGKILL, say)
is stored once, and the first terminal answer wins over a late duplicate.
Parked jobs are a sorted set (due time) that a sweeper re-enqueues: long waits
never become Celery countdowns, which on Redis run again once the visibility
timeout passes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from . import keys
from .config import FleetConfig
from .envelope import Delivery
from .errors import ResultTimeout
from .jobs import Result, Status

# Returns the stored result if it is final (jobs.TERMINAL; nothing written), else writes.
_SAVE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and (doc.status == 'succeeded' or doc.status == 'failed' or doc.status == 'dead') then
    return cur
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


class ResultStore:
    """The latest result of every job, keyed by job id (``P:result:{id}``, expiring).

    The dispatcher marks a job pending, the runner saves what happened, and
    producers, the API and the CLI read it back. Guarantee: once a terminal
    result (succeeded, failed, dead) is stored, nothing replaces it, so a
    redelivered or duplicated run cannot overwrite the first answer; only
    ``dlq replay`` clears it on purpose (:meth:`forget`).
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.ttl = config.reliability.result_expires_s
        self._save = client.register_script(_SAVE)

    def _key(self, job_id: str) -> str:
        return keys.result(self.config, job_id)

    def get(self, job_id: str) -> Result | None:
        raw = self.redis.get(self._key(job_id))
        return Result.model_validate_json(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> list[Result | None]:
        if not job_ids:
            return []
        raws = self.redis.mget([self._key(i) for i in job_ids])
        return [Result.model_validate_json(x) if x else None for x in raws]

    def save(self, result: Result) -> Result:
        """Upsert; a terminal result already stored is never replaced. Returns what is stored.

        One round trip: the check and the write run as one script inside Redis.
        """
        k = self._key(result.job_id)
        kept = self._save(keys=[k], args=[result.model_dump_json(), self.ttl])
        return result if kept is None else Result.model_validate_json(kept)

    def forget(self, job_id: str) -> None:
        """Drop a stored result, terminal or not: only for a job that is deliberately run again."""
        self.redis.delete(self._key(job_id))

    def mark_pending(self, job_id: str, tier: str) -> None:
        """Record that a job was accepted, without overwriting anything newer."""
        r = Result(job_id=job_id, status=Status.PENDING, tier=tier)
        self.redis.set(self._key(job_id), r.model_dump_json(), ex=self.ttl, nx=True)

    def mark_pending_many(self, items: Iterable[tuple[str, str]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for job_id, tier in items:
            r = Result(job_id=job_id, status=Status.PENDING, tier=tier)
            pipe.set(self._key(job_id), r.model_dump_json(), ex=self.ttl, nx=True)
        pipe.execute()

    def wait(self, job_ids: list[str], deadline: float | None, *,
             on_progress: Any = None, clock: Any = time.monotonic,
             sleep: Any = time.sleep) -> list[Result]:
        """The final result of each job, in the order given, polling until ``deadline``.

        ``deadline`` is a ``clock()`` time (monotonic by default); ``None`` looks once
        and answers a PENDING placeholder for every job not finished (or unknown).
        Raises :class:`~tierfleet.errors.ResultTimeout` when the deadline passes first.
        Polling backs off from 20 ms to 250 ms: short jobs answer fast, long waits cost
        a few Redis reads a second.
        """
        done: dict[str, Result] = {}
        pending = list(dict.fromkeys(job_ids))
        delay = 0.02
        while True:
            for jid, res in zip(pending, self.get_many(pending), strict=True):
                if res is not None and res.finished:
                    done[jid] = res
            pending = [j for j in pending if j not in done]
            if on_progress is not None:
                on_progress(len(done), len(job_ids))
            if not pending:
                return [done[j] for j in job_ids]
            if deadline is None:
                for jid, res in zip(pending, self.get_many(pending), strict=True):
                    done[jid] = res or Result(job_id=jid, status=Status.PENDING,
                                              error="unknown job id or not finished")
                return [done[j] for j in job_ids]
            if clock() >= deadline:
                raise ResultTimeout(
                    f"{len(pending)} of {len(job_ids)} job(s) not finished by the deadline "
                    f"(first: {pending[0]})"
                )
            sleep(delay)
            delay = min(delay * 1.5, 0.25)


class Parking:
    """Jobs waiting for any allowed tier to come back, and jobs given up on (dead letters).

    Owns ``P:parked`` (zset: job id -> due time) with ``P:parked:msg`` (hash: job
    id -> entry), and ``P:dlq`` / ``P:dlq:msg`` the same way for dead letters. An
    entry is ``{"delivery": <task kwargs>, "reason": ..., "parked_at"/"dead_at": ...}``.
    The runner parks and buries; the reaper claims due entries (only the one
    that removes an id from the index re-enqueues it, so two reapers never
    publish the same job); ``dlq replay`` takes dead letters back.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.parked_index = keys.parked_index(config)
        self.parked_bodies = keys.parked_bodies(config)
        self.dead_index = keys.dead_index(config)
        self.dead_bodies = keys.dead_bodies(config)

    def backoff(self, parks: int) -> float:
        steps = self.config.reliability.park_backoff_s
        return float(steps[min(parks, len(steps) - 1)])

    def park(self, delivery: Delivery, backoff_step: int, reason: str) -> float:
        """Park ``delivery`` (the one to publish when due); returns the due time."""
        now = time.time()
        due = now + self.backoff(backoff_step)
        entry = {"delivery": delivery.to_kwargs(), "reason": reason, "parked_at": now}
        pipe = self.redis.pipeline()
        pipe.hset(self.parked_bodies, delivery.job.id, json.dumps(entry))
        pipe.zadd(self.parked_index, {delivery.job.id: due})
        pipe.execute()
        return due

    def due(self, now: float | None = None, limit: int = 100) -> list[tuple[str, Delivery]]:
        ids = self.redis.zrangebyscore(self.parked_index, 0, now or time.time(), start=0, num=limit)
        if not ids:
            return []
        raws = self.redis.hmget(self.parked_bodies, ids)
        return [(i, _delivery_of(json.loads(m))) for i, m in zip(ids, raws, strict=True) if m]

    def claim(self, job_id: str) -> bool:
        """Only one sweeper re-enqueues a parked job: whoever removes it from the index."""
        return bool(self.redis.zrem(self.parked_index, job_id))

    def unpark(self, job_id: str) -> None:
        self.redis.hdel(self.parked_bodies, job_id)

    def parked(self) -> list[dict[str, Any]]:
        out = []
        for i, score in self.redis.zrange(self.parked_index, 0, -1, withscores=True):
            m = self.redis.hget(self.parked_bodies, i)
            if m:
                entry = json.loads(m)
                out.append({"id": i, "due_in_s": round(score - time.time(), 1),
                            "parks": _delivery_of(entry).parks, "reason": entry.get("reason")})
        return out

    def count(self) -> int:
        return int(self.redis.zcard(self.parked_index))

    def bury(self, delivery: Delivery, reason: str) -> None:
        """Give up on a job: it becomes a dead letter and leaves the parked set."""
        job_id = delivery.job.id
        now = time.time()
        entry = {"delivery": delivery.to_kwargs(), "reason": reason, "dead_at": now}
        pipe = self.redis.pipeline()
        pipe.hset(self.dead_bodies, job_id, json.dumps(entry))
        pipe.zadd(self.dead_index, {job_id: now})
        pipe.zrem(self.parked_index, job_id)
        pipe.hdel(self.parked_bodies, job_id)
        pipe.execute()

    def dead(self) -> list[dict[str, Any]]:
        """Dead-letter entries, oldest first: ``{"id", "delivery", "reason", "dead_at"}``."""
        ids = self.redis.zrange(self.dead_index, 0, -1)
        raws = self.redis.hmget(self.dead_bodies, ids) if ids else []
        return [{"id": i, **_entry(json.loads(m))} for i, m in zip(ids, raws, strict=True) if m]

    def take_dead(self, job_id: str) -> Delivery | None:
        raw = self.redis.hget(self.dead_bodies, job_id)
        if raw is None:
            return None
        pipe = self.redis.pipeline()
        pipe.hdel(self.dead_bodies, job_id)
        pipe.zrem(self.dead_index, job_id)
        pipe.execute()
        return _delivery_of(json.loads(raw))

    def dead_count(self) -> int:
        return int(self.redis.zcard(self.dead_index))


_BOOKKEEPING = ("reason", "parked_at", "dead_at")


def _entry(raw: dict[str, Any]) -> dict[str, Any]:
    """An entry in today's shape. Entries written before ``envelope.py`` mixed the
    bookkeeping into the message itself; a fleet upgraded with jobs parked must still
    read them."""
    if "delivery" in raw:
        return raw
    body = {k: v for k, v in raw.items() if k not in _BOOKKEEPING}
    return {"delivery": body, **{k: raw[k] for k in _BOOKKEEPING if k in raw}}


def _delivery_of(raw: dict[str, Any]) -> Delivery:
    return Delivery.from_kwargs(_entry(raw)["delivery"])
