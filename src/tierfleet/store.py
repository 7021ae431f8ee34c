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

from .broker import key
from .config import FleetConfig
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
    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.r = client
        self.config = config
        self.ttl = config.reliability.result_expires_s
        self._save = client.register_script(_SAVE)

    def _k(self, job_id: str) -> str:
        return key(self.config, "result", job_id)

    def get(self, job_id: str) -> Result | None:
        raw = self.r.get(self._k(job_id))
        return Result.model_validate_json(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> list[Result | None]:
        if not job_ids:
            return []
        raws = self.r.mget([self._k(i) for i in job_ids])
        return [Result.model_validate_json(x) if x else None for x in raws]

    def save(self, result: Result) -> Result:
        """Upsert; a terminal result already stored is never replaced. Returns what is stored.

        One round trip: the check and the write run as one script inside Redis.
        """
        k = self._k(result.job_id)
        kept = self._save(keys=[k], args=[result.model_dump_json(), self.ttl])
        return result if kept is None else Result.model_validate_json(kept)

    def mark_pending(self, job_id: str, tier: str) -> None:
        """Record that a job was accepted, without overwriting anything newer."""
        r = Result(job_id=job_id, status=Status.PENDING, tier=tier)
        self.r.set(self._k(job_id), r.model_dump_json(), ex=self.ttl, nx=True)

    def mark_pending_many(self, items: Iterable[tuple[str, str]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for job_id, tier in items:
            r = Result(job_id=job_id, status=Status.PENDING, tier=tier)
            pipe.set(self._k(job_id), r.model_dump_json(), ex=self.ttl, nx=True)
        pipe.execute()


class Parking:
    """Jobs waiting for any allowed tier to come back, and jobs given up on (dead letters)."""

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.r = client
        self.config = config
        self.zk = key(config, "parked")
        self.hk = key(config, "parked", "msg")
        self.dlq_z = key(config, "dlq")
        self.dlq_h = key(config, "dlq", "msg")

    def backoff(self, parks: int) -> float:
        steps = self.config.reliability.park_backoff_s
        return float(steps[min(parks, len(steps) - 1)])

    def park(self, job_id: str, message: dict[str, Any], parks: int, reason: str) -> float:
        due = time.time() + self.backoff(parks)
        body = {**message, "parks": parks + 1, "reason": reason, "parked_at": time.time()}
        pipe = self.r.pipeline()
        pipe.hset(self.hk, job_id, json.dumps(body))
        pipe.zadd(self.zk, {job_id: due})
        pipe.execute()
        return due

    def due(self, now: float | None = None, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        ids = self.r.zrangebyscore(self.zk, 0, now or time.time(), start=0, num=limit)
        if not ids:
            return []
        raws = self.r.hmget(self.hk, ids)
        return [(i, json.loads(m)) for i, m in zip(ids, raws, strict=True) if m]

    def claim(self, job_id: str) -> bool:
        """Only one sweeper re-enqueues a parked job: whoever removes it from the index."""
        return bool(self.r.zrem(self.zk, job_id))

    def unpark(self, job_id: str) -> None:
        self.r.hdel(self.hk, job_id)

    def parked(self) -> list[dict[str, Any]]:
        out = []
        for i, score in self.r.zrange(self.zk, 0, -1, withscores=True):
            m = self.r.hget(self.hk, i)
            if m:
                d = json.loads(m)
                out.append({"id": i, "due_in_s": round(score - time.time(), 1),
                            "parks": d.get("parks"), "reason": d.get("reason")})
        return out

    def count(self) -> int:
        return int(self.r.zcard(self.zk))

    # -- dead letters ------------------------------------------------------------

    def bury(self, job_id: str, message: dict[str, Any], reason: str) -> None:
        body = {**message, "reason": reason, "dead_at": time.time()}
        pipe = self.r.pipeline()
        pipe.hset(self.dlq_h, job_id, json.dumps(body))
        pipe.zadd(self.dlq_z, {job_id: time.time()})
        pipe.zrem(self.zk, job_id)
        pipe.hdel(self.hk, job_id)
        pipe.execute()

    def dead(self) -> list[dict[str, Any]]:
        ids = self.r.zrange(self.dlq_z, 0, -1)
        raws = self.r.hmget(self.dlq_h, ids) if ids else []
        return [{"id": i, **json.loads(m)} for i, m in zip(ids, raws, strict=True) if m]

    def take_dead(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.dlq_h, job_id)
        if raw is None:
            return None
        pipe = self.r.pipeline()
        pipe.hdel(self.dlq_h, job_id)
        pipe.zrem(self.dlq_z, job_id)
        pipe.execute()
        return json.loads(raw)

    def dead_count(self) -> int:
        return int(self.r.zcard(self.dlq_z))
