"""Job results keyed by job id, plus the parked-jobs record and the dead-letter queue.

Results are upserts keyed by job id: a job delivered twice (after a SIGKILL, say)
is stored once, and the first terminal answer wins over a late duplicate.
Parked jobs are a sorted set (due time) that a sweeper re-enqueues: long waits
never become Celery countdowns, which on Redis run again once the visibility
timeout passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from typing import Any

import redis

from . import keys
from .config import FleetConfig
from .envelope import Delivery
from .errors import ResultTimeout
from .jobs import Result, Status
from .shown import scrub

# Returns the stored result if it is final (jobs.TERMINAL; nothing written), else writes.
# A final write also closes the job in the open-jobs record (KEYS[2], KEYS[3]), in the
# same script: a job is open exactly until its final result exists.
_SAVE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and (doc.status == 'succeeded' or doc.status == 'failed' or doc.status == 'dead') then
    return cur
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('HDEL', KEYS[3], ARGV[4])
end
return false
"""

# Admission of one job, atomically: the same id with the same body is the same job
# ('same': nothing written, nothing to publish); with another body it is refused
# ('conflict'); a new id is marked pending and opened with its first delivery ('new').
_ADMIT = """
local d = redis.call('GET', KEYS[2])
if d then
  if d == ARGV[2] then return 'same' end
  return 'conflict'
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'same'
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[5])
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
return 'new'
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
        return self.saved(result, self.save_in(self.redis, result))

    def save_in(self, pipe: Any, result: Result) -> Any:
        """Queue :meth:`save`'s script on ``pipe`` (a transaction it must join); read its
        reply with :meth:`saved`. On a plain client it runs at once and returns the reply."""
        final = "1" if result.finished else "0"
        return self._save(
            keys=[self._key(result.job_id), keys.open_index(self.config), keys.open_bodies(self.config)],
            args=[result.model_dump_json(), self.ttl, final, result.job_id], client=pipe)

    @staticmethod
    def saved(result: Result, reply: Any) -> Result:
        """What is stored after the save script answered ``reply``: ``result``, or the
        final result that was already there."""
        return result if reply is None else Result.model_validate_json(reply)

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
        and answers the current (non-final) result of every job not finished. A job
        Redis has no record of answers :func:`unknown` at once: it was never submitted,
        its result expired, or Redis lost it (a crash inside the fsync window), and the
        producer should resubmit it under the same id.
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
            current = self.get_many(pending)
            for jid, res in zip(pending, current, strict=True):
                if res is None:
                    # Nothing about this id at all: waiting cannot help, so say so now.
                    done[jid] = unknown(jid)
            pending = [j for j in pending if j not in done]
            if not pending:
                return [done[j] for j in job_ids]
            if deadline is None:
                for jid, res in zip(pending, current, strict=True):
                    if jid not in done:
                        done[jid] = res or unknown(jid)
                return [done[j] for j in job_ids]
            if clock() >= deadline:
                raise ResultTimeout(
                    f"{len(pending)} of {len(job_ids)} job(s) not finished by the deadline "
                    f"(first: {pending[0]})"
                )
            sleep(delay)
            delay = min(delay * 1.5, 0.25)


def unknown(job_id: str) -> Result:
    """The answer for an id Redis has no record of (see :meth:`ResultStore.wait`)."""
    return Result(job_id=job_id, status=Status.UNKNOWN,
                  error="no record of this job: never submitted, expired, or lost by Redis "
                        "(a crash inside its fsync window); resubmit it with the same id")


class OpenJobs:
    """Every job that is not final yet, with the delivery that would carry it on.

    Owns ``P:open`` (zset: job id -> time of its last change), ``P:open:body`` (hash:
    job id -> the latest delivery's kwargs) and ``P:digest:{id}`` (the body digest the
    id was admitted with). The dispatcher admits jobs here before publishing them; the
    runner and the reaper keep the body current when a job moves or parks; the final
    result closes it (in :class:`ResultStore`'s save script). The reaper's repair
    sweep reads it to find open jobs that have no message anywhere (a worker killed
    between kombu's pop and its ``unacked`` write, a publish lost with Redis) and
    sends them again from the body kept here. Guarantee: an admitted job is either
    final, or open with a copy of its delivery, from the moment ``submit`` returns.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.index = keys.open_index(config)
        self.bodies = keys.open_bodies(config)
        self._admit = client.register_script(_ADMIT)

    @staticmethod
    def digest(job: Any) -> str:
        """What makes two submissions the same job: every field but the id."""
        body = job.model_dump(mode="json", exclude={"id"})
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def admit(self, deliveries: list[Delivery]) -> list[str]:
        """Admit each delivery's job: ``new`` (publish it), ``same`` or ``conflict``."""
        now = time.time()
        ttl = self.config.reliability.result_expires_s
        pipe = self.redis.pipeline(transaction=False)
        for d in deliveries:
            pending = Result(job_id=d.job.id, status=Status.PENDING, tier=d.tier)
            self._admit(
                keys=[keys.result(self.config, d.job.id), keys.digest(self.config, d.job.id),
                      self.index, self.bodies],
                args=[d.job.id, self.digest(d.job), pending.model_dump_json(),
                      json.dumps(d.to_kwargs()), ttl, now],
                client=pipe,
            )
        return [x.decode() if isinstance(x, bytes) else str(x) for x in pipe.execute()]

    def admitted_otherwise(self, job: Any) -> bool:
        """True when ``job.id`` was admitted with another body. The digest expires with the
        admission's result TTL, so this still answers once the job is final and closed here."""
        kept = self.redis.get(keys.digest(self.config, job.id))
        if isinstance(kept, bytes):
            kept = kept.decode()
        return kept is not None and kept != self.digest(job)

    def update(self, delivery: Delivery, pipe: Any = None) -> None:
        """The job goes on as ``delivery`` (moved, parked, repaired): keep that copy."""
        p = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        p.hset(self.bodies, delivery.job.id, json.dumps(delivery.to_kwargs()))
        p.zadd(self.index, {delivery.job.id: time.time()})
        if pipe is None:
            p.execute()

    def older_than(self, age_s: float, limit: int = 1000) -> list[str]:
        return list(self.redis.zrangebyscore(self.index, 0, time.time() - age_s, start=0, num=limit))

    def result_and_attempt(self, job_id: str) -> tuple[Result | None, int | None]:
        """The job's stored result and the attempt its kept delivery is at (None when it
        is not open), in one round trip: a delivery older than the kept one is superseded."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.result(self.config, job_id))
        pipe.hget(self.bodies, job_id)
        raw, body = pipe.execute()
        stored = Result.model_validate_json(raw) if raw else None
        attempt = int(json.loads(body).get("attempt") or 1) if body else None
        return stored, attempt

    def body(self, job_id: str) -> Delivery | None:
        raw = self.redis.hget(self.bodies, job_id)
        return Delivery.from_kwargs(json.loads(raw)) if raw else None

    def close(self, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.index, job_id)
        pipe.hdel(self.bodies, job_id)
        pipe.execute()

    def count(self) -> int:
        return int(self.redis.zcard(self.index))


# Take a lease held by a dead owner: only if it still holds exactly what we read.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    """At most one delivery of a job calls a host at a time: ``P:lease:{id}``.

    Celery on Redis delivers at least once, so two copies of one job can run at once
    (a restored delivery, a repaired one). The runner takes the job's lease before it
    calls any host and drops it when the delivery returns. A copy that finds the lease
    held by a live owner (its node beats, lists its pid and the job) with the same or a later
    attempt is a duplicate and steps aside; a later attempt (the job moved on) waits
    briefly for the earlier one to return; a lease whose owner died is taken over.
    The holder's own message stays in ``unacked`` until it returns, so stepping aside
    never strands the job.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.ttl_ms = int((config.reliability.task_time_limit_s + 60) * 1000)
        self._take_over = client.register_script(_TAKE_OVER)
        self._release = client.register_script(_RELEASE)

    def acquire(self, job_id: str, owner: str, attempt: int, *, wait_s: float = 5.0) -> str | None:
        """Take the lease; returns the token to release it with, or None for a duplicate."""
        from .heartbeats import holds

        key = keys.lease(self.config, job_id)
        token = json.dumps({"owner": owner, "attempt": attempt, "at": time.time(),
                            "nonce": os.urandom(6).hex()})
        deadline = time.monotonic() + wait_s
        while True:
            if self.redis.set(key, token, nx=True, px=self.ttl_ms):
                return token
            held = self.redis.get(key)
            if held is None:
                continue
            holder = json.loads(held)
            # owner = "node|pid|thread": the same thread is this delivery run again (after
            # a Redis blink), never a duplicate. Alive means still running the job: a live
            # process whose release was lost (with Redis's last second of AOF) no longer
            # lists it, and its lease is taken over.
            alive = holder.get("owner") != owner and holds(
                self.redis, self.config, str(holder.get("owner", "")), job_id, holder.get("at"))
            if not alive or (int(holder.get("attempt", 0)) < attempt
                             and time.monotonic() > deadline):
                if self._take_over(keys=[key], args=[held, token, self.ttl_ms]):
                    return token
                continue
            if int(holder.get("attempt", 0)) >= attempt:
                return None
            time.sleep(0.05)  # an earlier attempt is returning (it published this one)

    def release(self, job_id: str, token: str) -> None:
        self._release(keys=[keys.lease(self.config, job_id)], args=[token])


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
        self._take = client.register_script(_TAKE_DUE)

    def backoff(self, parks: int) -> float:
        steps = self.config.reliability.park_backoff_s
        return float(steps[min(parks, len(steps) - 1)])

    def park(self, delivery: Delivery, backoff_step: int, reason: str) -> float:
        """Park ``delivery`` (the one to publish when due); returns the due time.

        The open-jobs copy becomes this delivery in the same transaction, so a job taken
        out of the parked set and lost before its publish is repaired as it was parked.
        """
        now = time.time()
        due = now + self.backoff(backoff_step)
        entry = {"delivery": delivery.to_kwargs(), "reason": reason, "parked_at": now}
        pipe = self.redis.pipeline()
        pipe.hset(self.parked_bodies, delivery.job.id, json.dumps(entry))
        pipe.zadd(self.parked_index, {delivery.job.id: due})
        OpenJobs(self.redis, self.config).update(delivery, pipe)
        pipe.execute()
        return due

    def due(self, now: float | None = None, limit: int = 100) -> list[tuple[str, Delivery]]:
        """The due entries, read only (the reaper uses :meth:`take_due`)."""
        ids = self.redis.zrangebyscore(self.parked_index, 0, now or time.time(), start=0, num=limit)
        if not ids:
            return []
        raws = self.redis.hmget(self.parked_bodies, ids)
        return [(i, _delivery_of(json.loads(m))) for i, m in zip(ids, raws, strict=True) if m]

    def take_due(self, now: float | None = None, limit: int = 100) -> list[Delivery]:
        """Remove the due entries and return them, atomically: the caller publishes them.

        Taking before publishing is what keeps a job from being stranded: if the
        publish is lost, the job is open with no message and the repair sweep sends
        it; if a worker parks the republished job again meanwhile, its fresh entry is
        never deleted by this sweep (it was taken before the publish).
        """
        raw = self._take(keys=[self.parked_index, self.parked_bodies],
                         args=[now or time.time(), limit])
        out = []
        for body in raw[1::2]:
            out.append(_delivery_of(json.loads(body)))
        return out

    def parked(self) -> list[dict[str, Any]]:
        out = []
        for i, score in self.redis.zrange(self.parked_index, 0, -1, withscores=True):
            m = self.redis.hget(self.parked_bodies, i)
            if m:
                entry = json.loads(m)
                d = _delivery_of(entry)
                job = d.job.model_dump(mode="json")
                out.append({"id": i, "due_in_s": round(score - time.time(), 1),
                            "parks": d.parks, "privacy": d.job.privacy.value,
                            # An operator's screen: a confidential job's words scrubbed.
                            "reason": scrub(entry.get("reason"), job)})
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

    def dead_delivery(self, job_id: str) -> Delivery | None:
        """A dead letter's delivery, left in place (replay drops it once it is re-sent)."""
        raw = self.redis.hget(self.dead_bodies, job_id)
        return _delivery_of(json.loads(raw)) if raw is not None else None

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


_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  if body then
    table.insert(out, id)
    table.insert(out, body)
  end
end
return out
"""

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
