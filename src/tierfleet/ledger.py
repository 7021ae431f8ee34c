"""The ledger: one record per attempt, billed once however often a job is delivered.

Celery on Redis delivers at least once, so the same attempt may reach
:meth:`Ledger.record` twice. The record, the raw per-day list and the
aggregates are written in one Redis transaction (WATCH/MULTI) guarded by the
job's own hash: a second delivery finds its ``(job_id, attempt)`` field and
changes nothing.

Redis layout (``P`` = ``config.key_prefix``; every key expires after the
retention period):

- ``P:ledger:job:{job_id}``: hash, attempt number -> record JSON;
- ``P:ledger:day:{YYYY-MM-DD}``: list of the day's record JSON (UTC days), read by
  reports on any machine (latency percentiles need the raw values);
- ``P:ledger:agg:{YYYY-MM-DD}:{dim}``: hash of integer counters, field
  ``{value}|{metric}``, for ``dim`` in total/workflow/tier/model/kind. Money is
  counted in nano-dollars so the counters add up exactly.

Each new record also goes, in the same transaction, to the stream
``P:ledger:log``; :class:`LedgerExport` (a thread in every worker, one at a time
fleet-wide) appends the stream to ``{ledger.dir}/token-usage-YYYY-MM-DD.jsonl``
and trims what it wrote. So a worker killed right after a record, or a disk that
hangs, costs no line and blocks no job; a crash between the append and the trim
may write a line twice, which readers drop by its key (:func:`read_jsonl`).
Redis is the shared source of truth; the files are the greppable trail.

Records are per host call: a job whose host was called twice (a worker killed
after the call, a 429 waited out) has two records, as the provider's invoice
does. ``job_final`` marks the record that ends the job (its first final one).

Which attempt carries what:

- ``jobs`` counts records that end their job (``job_final``: the first record of
  the job with outcome ok, failed or cached); an attempt that fell back or
  escalated is followed by another one for the same job.
- The baseline (what the job would have cost on the baseline model) is counted
  once per job, on its final attempt, so a job that took three attempts is not
  compared with three baseline calls.
- A final attempt flags its job as having fallen back when an earlier attempt
  of the job ended in ``fallback`` (or, with no earlier record, when it says
  ``fallbacks > 0``), and as escalated when one ended in ``escalated``.
  Fallback and escalation rates are shares of jobs.

Records hold counts, names and times, never prompts, answers or keys; error
texts are cut short and scrubbed of anything that looks like a credential.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel

from . import keys
from .config import FleetConfig
from .jobs import Attempt
from .pricing import attempt_cost, baseline_cost, from_nanos, to_nanos

__all__ = ["DIMENSIONS", "FINAL_OUTCOMES", "Ledger", "Recorded", "Totals", "day_of", "scrub_error"]

log = logging.getLogger(__name__)

FINAL_OUTCOMES = frozenset({"ok", "failed", "cached"})
DIMENSIONS = ("total", "workflow", "tier", "model", "kind")
DEFAULT_RETENTION_DAYS = 400
_MAX_ERROR_CHARS = 300
_SECRETISH = re.compile(
    r"(?i)(bearer\s+|authorization:\s*|api[_-]?key[\"']?\s*[:=]\s*[\"']?|token[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;&]+|\b(sk|rk|rpa|pk)[-_][A-Za-z0-9_-]{8,}"
)


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def scrub_error(text: str | None) -> str | None:
    """Cut an error message short and blank anything shaped like a credential."""
    if text is None:
        return None
    cleaned = _SECRETISH.sub(lambda m: (m.group(1) or "") + "[redacted]", text)
    return cleaned[:_MAX_ERROR_CHARS]


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Totals(BaseModel):
    """Counters of one group over a period, read back from the Redis aggregates."""

    attempts: int = 0
    jobs: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nusd: int = 0
    baseline_nusd: int = 0
    fallbacks: int = 0
    escalations: int = 0
    fallback_jobs: int = 0
    escalated_jobs: int = 0
    cache_hits: int = 0
    failed: int = 0
    latency_ms: int = 0
    estimated: int = 0
    simulated: int = 0

    @property
    def cost_usd(self) -> float:
        return from_nanos(self.cost_nusd)

    @property
    def baseline_usd(self) -> float:
        return from_nanos(self.baseline_nusd)


def is_job_final(rec: dict[str, Any]) -> bool:
    """Whether a record ends its job (records written before ``job_final`` existed: by outcome)."""
    return bool(rec.get("job_final", rec["outcome"] in FINAL_OUTCOMES))


def record_field(attempt: Attempt) -> str:
    """A record's key within its job: the attempt, and the host call when there is one."""
    return f"{attempt.attempt}:{attempt.call}" if attempt.call else str(attempt.attempt)


def _counters(rec: dict[str, Any]) -> dict[str, int]:
    final = is_job_final(rec)
    return {
        "attempts": 1,
        "jobs": int(final),
        "tokens_in": int(rec["tokens_in"]),
        "tokens_out": int(rec["tokens_out"]),
        "cost_nusd": to_nanos(rec["cost_usd"]),
        "baseline_nusd": to_nanos(rec["baseline_cost_usd"]),
        "fallbacks": int(rec["outcome"] == "fallback"),
        "escalations": int(rec["outcome"] == "escalated"),
        "fallback_jobs": int(final and rec["job_fallback"]),
        "escalated_jobs": int(final and rec["job_escalated"]),
        "cache_hits": int(final and (rec["cache_hit"] or rec["outcome"] == "cached")),
        "failed": int(rec["outcome"] == "failed"),
        "latency_ms": round(float(rec["latency_s"]) * 1000),
        "estimated": int(bool(rec["tokens_estimated"])),
        "simulated": int(bool(rec["simulated"])),
    }


def _dim_values(rec: dict[str, Any]) -> dict[str, str]:
    return {
        "total": "all",
        "workflow": rec["workflow"],
        "tier": rec["tier"],
        "model": rec["model"] or "-",
        "kind": rec["kind"],
    }


class CommandCapture(redis.commands.CoreCommands):  # type: ignore[misc]
    """Stands in for a pipeline: redis-py's command methods build the raw arguments
    (``HSET k f v``), which are kept here instead of being sent."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.commands.append(args)


@dataclass(frozen=True)
class Planned:
    """One new ledger record as raw writes, guarded by the job hash's size (:meth:`Ledger.plan`)."""

    attempt: Attempt  # priced
    job_key: str
    field: str
    earlier: int  # fields the job hash had when read
    commands: list[tuple[Any, ...]]
    job_cost_usd: float


@dataclass(frozen=True)
class Recorded:
    """What :meth:`Ledger.record` did: ``new`` is False for a redelivery (nothing written);
    ``job_cost_usd`` is the job's running total over every attempt recorded so far;
    ``then`` holds the replies of the writes ``then`` queued (empty when nothing was written)."""

    new: bool
    job_cost_usd: float
    then: tuple[Any, ...] = ()


class Ledger:
    """The bill: one record per (job, attempt), in Redis under ``P:ledger:...``.

    The runner calls :meth:`record` for every attempt (model, rules, cache hit,
    fallback); reports read the day lists; ``tierfleet report`` and the API read
    :meth:`records`. Guarantees: an attempt is billed once however often its job
    is delivered, the fleet metrics passed as ``also`` move in the same
    transaction, and the ledger is the only place an attempt is priced.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        config: FleetConfig,
        *,
        retention_days: float | None = None,
        write_jsonl: bool = True,
    ) -> None:
        self.redis = redis_client
        self.config = config
        if retention_days is None:
            retention_days = config.ledger.redis_days()
        self.retention_s = int(retention_days * 86400)
        # The raw per-day lists serve reports from Redis; once SQL holds the ledger, reports
        # read it there and Redis keeps one copy less of every record.
        self.day_lists = config.ledger.url is None
        self.write_jsonl = write_jsonl
        self._p = keys.ledger_prefix(config)
        self._log_key = keys.ledger_log(config)

    def _job_key(self, job_id: str) -> str:
        return f"{self._p}:job:{job_id}"

    def job_key(self, job_id: str) -> str:
        """The hash of a job's records (what :meth:`plan`'s guard checks)."""
        return self._job_key(job_id)

    def _day_key(self, day: str) -> str:
        return f"{self._p}:day:{day}"

    def _agg_key(self, day: str, dim: str) -> str:
        return f"{self._p}:agg:{day}:{dim}"

    def price(self, attempt: Attempt, *, seconds: float | None = None) -> Attempt:
        """Fill what the worker left unset: cost, baseline, timestamp; scrub the error text.

        ``seconds`` is the time the host billed (Runpod's execution time) when it
        differs from the attempt's latency; rented tiers are priced by it.
        """
        update: dict[str, Any] = {}
        fields = attempt.model_fields_set
        if "cost_usd" not in fields:
            update["cost_usd"] = (
                0.0
                if attempt.outcome == "cached"
                else attempt_cost(
                    self.config,
                    tier=attempt.tier,
                    host=attempt.host,
                    model=attempt.model,
                    tokens_in=attempt.tokens_in,
                    tokens_out=attempt.tokens_out,
                    seconds=attempt.latency_s if seconds is None else seconds,
                )
            )
        if "baseline_cost_usd" not in fields:
            # Counted once per job, on the attempt that ends it.
            update["baseline_cost_usd"] = (
                baseline_cost(self.config, attempt.tokens_in, attempt.tokens_out)
                if attempt.outcome in FINAL_OUTCOMES
                else 0.0
            )
        if not attempt.ts:
            update["ts"] = time.time()
        if attempt.error is not None:
            update["error"] = scrub_error(attempt.error)
        return attempt.model_copy(update=update) if update else attempt

    def record(self, attempt: Attempt, *, seconds: float | None = None,
               also: Callable[[Any, Attempt], None] | None = None,
               then: Callable[[Any, Attempt, float], None] | None = None) -> Recorded:
        """Store one attempt, priced here (see :meth:`price`); a second delivery writes nothing.

        ``also(pipe, attempt)`` may queue more writes (the fleet metrics) inside the same
        transaction, so they happen exactly when the record does. ``then(pipe, attempt,
        job_cost_usd)`` queues what the record settles (the job's result, the delivery it
        moves on as) last in that transaction: a worker killed after the record cannot
        leave the job looking unsettled, so no redelivery calls the host again for it.
        The job's running cost comes from the same read that guards the write, so nobody
        reads it back.
        """
        attempt = self.price(attempt, seconds=seconds)
        job_key = self._job_key(attempt.job_id)
        field = record_field(attempt)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(job_key)
                    earlier = {_str(k): _str(v) for k, v in pipe.hgetall(job_key).items()}
                    spent = sum(json.loads(e).get("cost_usd", 0.0) for e in earlier.values())
                    if field in earlier:
                        pipe.unwatch()
                        return Recorded(False, round(spent, 8))
                    rec = self._record_dict(attempt, earlier.values())
                    pipe.multi()
                    self._queue_writes(pipe, attempt, rec, also)
                    mark = len(pipe)
                    if then is not None:
                        then(pipe, attempt, round(spent + attempt.cost_usd, 8))
                    replies = pipe.execute()
                    break
                except redis.WatchError:
                    # Another delivery of this job wrote first: look again.
                    continue
        return Recorded(True, round(spent + attempt.cost_usd, 8), tuple(replies[mark:]))

    def _queue_writes(self, pipe: Any, attempt: Attempt, rec: dict[str, Any],
                      also: Callable[[Any, Attempt], None] | None) -> None:
        """Every write of one new record (and ``also``'s), queued on ``pipe``."""
        job_key = self._job_key(attempt.job_id)
        day = day_of(attempt.ts)
        line = json.dumps(rec, separators=(",", ":"), sort_keys=True)
        pipe.hset(job_key, record_field(attempt), line)
        pipe.expire(job_key, self.retention_s)
        if self.day_lists:  # off once SQL holds the ledger: reports read it there
            pipe.rpush(self._day_key(day), line)
            pipe.expire(self._day_key(day), self.retention_s)
        counters = _counters(rec)
        for dim, value in _dim_values(rec).items():
            key = self._agg_key(day, dim)
            for metric, n in counters.items():
                if n:
                    pipe.hincrby(key, f"{value}|{metric}", n)
            pipe.expire(key, self.retention_s)
        if self.write_jsonl:
            # The JSONL copy is exported from this stream (LedgerExport), so a
            # worker dying after this transaction, or a hung disk, costs no line.
            pipe.xadd(self._log_key, {"day": day, "rec": line})
        if also is not None:
            also(pipe, attempt)

    def plan(self, attempt: Attempt, earlier: dict[str, str], *, seconds: float | None = None,
             also: Callable[[Any, Attempt], None] | None = None) -> Planned | None:
        """The writes :meth:`record` would make for ``attempt`` given the job's ``earlier``
        records (its hash, read by the caller), as raw commands for one script to run
        (``finish.py``); None when the attempt is already recorded.

        The caller must apply them only if the job's hash still has ``len(earlier)``
        fields and not this one (records are only ever added), else call :meth:`record`.
        """
        attempt = self.price(attempt, seconds=seconds)
        field = record_field(attempt)
        if field in earlier:
            return None
        spent = sum(json.loads(e).get("cost_usd", 0.0) for e in earlier.values())
        capture = CommandCapture()
        self._queue_writes(capture, attempt, self._record_dict(attempt, earlier.values()), also)
        return Planned(attempt, self._job_key(attempt.job_id), field, len(earlier),
                       capture.commands, round(spent + attempt.cost_usd, 8))

    def _record_dict(self, attempt: Attempt, earlier: Any) -> dict[str, Any]:
        rec = attempt.model_dump(mode="json")
        outcomes = [json.loads(e).get("outcome") for e in earlier]
        # The job's earlier records say what happened; ``fallbacks`` (the worker's
        # trail length, which also counts escalations) is only the fallback signal
        # when no earlier attempt was recorded.
        rec["job_fallback"] = "fallback" in outcomes or (not outcomes and attempt.fallbacks > 0)
        rec["job_escalated"] = "escalated" in outcomes
        # The record that ends the job: its first final one. A host call repeated after a
        # crash is billed (the provider charged it) but the job is still one job.
        rec["job_final"] = attempt.outcome in FINAL_OUTCOMES and not any(
            o in FINAL_OUTCOMES for o in outcomes)
        if not rec["job_final"]:
            rec["baseline_cost_usd"] = 0.0
        return rec


    @staticmethod
    def _days(start: float, end: float) -> list[str]:
        first = datetime.fromtimestamp(start, UTC).date()
        last = datetime.fromtimestamp(end, UTC).date()
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    def raw_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """Record dicts with ``start < ts <= end`` (with the job_fallback/job_escalated flags)."""
        days = self._days(start, end)
        with self.redis.pipeline(transaction=False) as pipe:
            for d in days:
                pipe.lrange(self._day_key(d), 0, -1)
            lists = pipe.execute()
        out: list[dict[str, Any]] = []
        for items in lists:
            for item in items:
                rec = json.loads(_str(item))
                if start < rec.get("ts", 0.0) <= end:
                    out.append(rec)
        return out

    def records(self, since_days: float = 30, *, end: float | None = None) -> list[Attempt]:
        end = time.time() if end is None else end
        return [Attempt.model_validate(r) for r in self.raw_between(end - since_days * 86400, end)]

    def job_attempts(self, job_id: str) -> list[Attempt]:
        raw = self.redis.hgetall(self._job_key(job_id))
        recs = [Attempt.model_validate_json(_str(v)) for v in raw.values()]
        return sorted(recs, key=lambda a: (a.attempt, a.ts))

    def totals(
        self, since_days: float = 30, by: str = "total", *, end: float | None = None
    ) -> dict[str, Totals]:
        """Counters per value of ``by`` over whole UTC days, from the Redis aggregates."""
        if by not in DIMENSIONS:
            raise ValueError(f"by must be one of {DIMENSIONS}, got {by!r}")
        end = time.time() if end is None else end
        acc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        with self.redis.pipeline(transaction=False) as pipe:
            for d in self._days(end - since_days * 86400, end):
                pipe.hgetall(self._agg_key(d, by))
            hashes = pipe.execute()
        for h in hashes:
            for k, v in h.items():
                value, metric = _str(k).rsplit("|", 1)
                acc[value][metric] += int(v)
        return {value: Totals(**counts) for value, counts in acc.items()}


class InFlight:
    """Host calls announced but not yet recorded: ``P:ledger:inflight`` (call id -> note).

    The runner announces each host call here before making it and ends the note in
    the same transaction as the call's ledger record. A note left behind means the
    worker died between the call and its record: the reaper (:meth:`settle`) records
    such a call as ``lost_call`` once its owner is gone (node not beating, its pid no
    longer in the node's heartbeat, or the job no longer among the jobs it lists: its
    record was lost with Redis's last second) or its deadline has passed, pricing the input
    tokens it sent, so the ledger still holds every call a provider may bill.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.key = keys.inflight(config)

    def begin(self, delivery: Any, host: str, model: str, owner: str) -> str:
        call = os.urandom(6).hex()
        job = delivery.job
        hc = self.config.hosts.get(host)
        limit = float(getattr(hc, "timeout_s", 0) or 0) + self.config.reliability.task_time_limit_s
        note = {
            "job_id": job.id, "attempt": delivery.attempt, "workflow": job.workflow,
            "kind": delivery.route.kind.value, "tier": delivery.tier, "host": host,
            "model": model, "privacy": job.privacy.value, "owner": owner,
            "tokens_in": delivery.route.tokens_in or 0, "fallbacks": len(delivery.trail),
            "ts": time.time(), "deadline": time.time() + limit,
        }
        self.redis.hset(self.key, call, json.dumps(note))
        return call

    def end(self, call: str, pipe: Any) -> None:
        pipe.hdel(self.key, call)

    def forget(self, call: str | None) -> None:
        """The call never reached its host (connection refused): nothing to record."""
        if call:
            self.redis.hdel(self.key, call)

    def settle(self, ledger: Ledger, now: float | None = None) -> int:
        """Record the calls whose worker died before recording them; returns how many."""
        from .heartbeats import holds

        now = time.time() if now is None else now
        settled = 0
        for call, raw in self.redis.hgetall(self.key).items():
            note = json.loads(raw)
            grace = self.config.reliability.dead_after_s
            if now - float(note["ts"]) < grace:
                continue
            alive = holds(self.redis, self.config, str(note.get("owner", "")),
                          str(note["job_id"]), float(note["ts"]))
            if alive and now < float(note["deadline"]):
                continue
            att = Attempt(
                job_id=note["job_id"], attempt=int(note["attempt"]), workflow=note["workflow"],
                kind=note["kind"], tier=note["tier"], host=note["host"], model=note["model"],
                tokens_in=int(note["tokens_in"]), tokens_estimated=True, outcome="lost_call",
                fallbacks=int(note["fallbacks"]), privacy=note["privacy"], ts=float(note["ts"]),
                error="the worker died before recording this call's answer", call=_str(call),
            )
            ledger.record(att, also=lambda pipe, a, c=call: pipe.hdel(self.key, c))
            self.redis.hdel(self.key, call)
            settled += 1
        return settled


def sql_cursor_key(config: FleetConfig) -> str:
    return keys.key(config, "ledger", "sql", "cursor")


def trim_ledger_stream(client: redis.Redis, config: FleetConfig, own_last: str | None = None) -> None:
    """Trim the record stream below the slowest reader's cursor (the JSONL export, and the
    SQL writer when ``ledger.url`` is set), so neither loses a record to the other's trim."""
    cursors = [keys.ledger_log_cursor(config)]
    if config.ledger.url:
        cursors.append(sql_cursor_key(config))
    values = client.mget(cursors)
    if any(v is None for v in values):
        return  # a reader that has not started yet still needs everything
    ids = [_str(v) for v in values]
    lowest = min(ids, key=lambda i: tuple(int(x) for x in i.split("-")))
    # XTRIM MINID keeps the entry equal to ``lowest``; its reader's cursor skips it.
    client.xtrim(keys.ledger_log(config), minid=lowest, approximate=False)


class LedgerExport:
    """Appends the ledger's record stream to the JSONL files, then trims the stream.

    Owns ``P:ledger:log:cursor`` (the last exported stream id) and
    ``P:ledger:export:lock``. Every worker runs :meth:`run_forever` in its own thread
    (never the reaper's, so a hung disk stalls only this); the lock lets one export
    at a time. Guarantee: every record reaches a file at least once; a line written
    twice (a crash between the append and the cursor update) has the same ``key``
    and :func:`read_jsonl` keeps one.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.stream = keys.ledger_log(config)
        self.cursor_key = keys.ledger_log_cursor(config)
        self.lock_key = keys.ledger_export_lock(config)

    def drain(self, batch: int = 1000) -> int:
        """Export what the stream holds now; returns the number of lines written."""
        if not self.redis.set(self.lock_key, str(os.getpid()), nx=True, ex=60):
            return 0
        written = 0
        try:
            while True:
                cursor = _str(self.redis.get(self.cursor_key) or "0-0")
                entries = self.redis.xrange(self.stream, min=f"({cursor}", count=batch)
                if not entries:
                    return written
                by_day: dict[str, list[str]] = defaultdict(list)
                for _, fields in entries:
                    f = {_str(k): _str(v) for k, v in fields.items()}
                    by_day[f["day"]].append(f["rec"])
                folder = Path(self.config.ledger.dir)
                folder.mkdir(parents=True, exist_ok=True)
                for day, lines in by_day.items():
                    path = folder / f"token-usage-{day}.jsonl"
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                    try:
                        os.write(fd, ("\n".join(lines) + "\n").encode())
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                last = _str(entries[-1][0])
                self.redis.set(self.cursor_key, last)
                trim_ledger_stream(self.redis, self.config)
                written += len(entries)
        finally:
            self.redis.delete(self.lock_key)

    def run_forever(self, stop: Any, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.drain()
            except redis.RedisError as exc:
                log.warning("ledger export: redis unavailable (%s); retrying", exc)
            except OSError as exc:
                # The record stays in the stream; the next round tries again.
                log.warning("ledger export: could not write %s: %s", self.config.ledger.dir, exc)
            except Exception:
                log.exception("ledger export failed; retrying")
            stop.wait(interval)


def read_jsonl(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record in a ledger folder's JSONL files, once each (by job, attempt and call)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(Path(folder).glob("token-usage-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            key = (rec["job_id"], f"{rec['attempt']}:{rec.get('call') or ''}")
            seen.setdefault(key, rec)
    return list(seen.values())
