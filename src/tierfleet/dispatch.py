"""Submit jobs: validate, count tokens, route, enqueue on the tier's queue.

    submit(Job) -> validate (pydantic + limits + rules payload) -> Policy.route(job, state)
                -> result store "pending" -> Celery message on queue route.tier (JSON)

``submit_many`` routes the whole batch at once and publishes it through one
kombu publish batch (a Redis pipeline), staying wire-compatible with any
Celery worker.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from celery import Celery
from pydantic import BaseModel, ValidationError

from . import keys, rules
from .broker import Door, make_celery, redis_client, send
from .budgets import BudgetBook
from .config import FleetConfig, LimitsConfig, get_config
from .durability import DurableSubmit
from .envelope import Delivery
from .errors import JobRejected
from .fleetnumbers import status_view
from .health import Breaker, breaker_table
from .heartbeats import live_workers
from .inputs import check_image, safe_text, scan
from .jobs import Job, Result, Route
from .learning import fleet_policy
from .policy import FleetState, Policy
from .shown import shown_dead_letter
from .store import OpenJobs, Parking, ResultStore


class Handle(BaseModel):
    id: str
    route: Route


def _as_mapping(data: Any) -> Mapping[str, Any]:
    """The raw fields of whatever the caller handed in, or a rejection saying what it was."""
    if isinstance(data, Job):
        # Re-validated like any mapping: a Job may have been built with model_construct,
        # or mutated after construction, and its input/metadata were never scanned.
        raw: dict[str, Any] = {}
        for name in Job.model_fields:
            value = getattr(data, name, None)
            if name == "messages" and value is not None:
                value = [m.model_dump() if isinstance(m, BaseModel) else m for m in value]
            raw[name] = getattr(value, "value", value) if name != "input" else value
        return raw
    if isinstance(data, Mapping):
        return data
    if data is None:
        raise JobRejected("job", "no job given: pass a dict of job fields or a Job")
    raise JobRejected("job", f"a job is a dict of fields or a Job, not {type(data).__name__}")


def _parse(data: Any, limits: LimitsConfig) -> Job:
    raw = _as_mapping(data)
    # Total before pydantic: depth, surrogates, NaN/Infinity, non-JSON types and size,
    # each named by field, so nothing below can raise anything but a ValidationError.
    scan(raw, "", max_depth=limits.max_json_depth, max_bytes=limits.max_payload_bytes, start_depth=-1)
    try:
        return Job.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(safe_text(str(p)) for p in first["loc"])
        msg = safe_text(str(first["msg"])).removeprefix("Value error, ")
        if not field:
            # Whole-job checks word their message "field: why".
            field, _, msg = msg.partition(": ") if ": " in msg else ("job", "", msg)
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise JobRejected(field, msg + more) from None


def parse_job(data: Job | Mapping[str, Any] | Any, limits: LimitsConfig | None = None) -> Job:
    """A Job from a mapping (or a Job), or one clear JobRejected naming the field.

    Total: whatever ``data`` is, the only exception out of here is JobRejected.
    """
    lim = limits if limits is not None else LimitsConfig()
    try:
        return _parse(data, lim)
    except JobRejected:
        raise
    except RecursionError:
        raise JobRejected("job", "nested too deeply to read") from None
    except Exception as exc:
        # A case the scan did not foresee must still be a rejection, never a 500.
        raise JobRejected("job", f"could not be read ({type(exc).__name__})") from None


def _check_limits(job: Job, config: FleetConfig) -> None:
    lim = config.limits
    if job.prompt is not None and len(job.prompt) > lim.max_prompt_chars:
        raise JobRejected("prompt", f"{len(job.prompt)} characters, limit {lim.max_prompt_chars}")
    if job.messages is not None:
        if len(job.messages) > lim.max_messages:
            raise JobRejected("messages", f"{len(job.messages)} messages, limit {lim.max_messages}")
        total = sum(len(m.content) for m in job.messages)
        if total > lim.max_prompt_chars:
            raise JobRejected("messages", f"{total} characters, limit {lim.max_prompt_chars}")
    n_images = len(job.images) + sum(len(m.images) for m in job.messages or [])
    if n_images > lim.max_images:
        raise JobRejected("images", f"{n_images} images, limit {lim.max_images}")
    for i, img in enumerate(job.images):
        check_image(img, f"images[{i}]", lim.max_image_bytes)
    for i, m in enumerate(job.messages or []):
        for j, img in enumerate(m.images):
            check_image(img, f"messages[{i}].images[{j}]", lim.max_image_bytes)
    # The job was scanned (parse_job), so this cannot meet a surrogate, NaN or deep nesting.
    size = len(json.dumps(job.model_dump(mode="json"), ensure_ascii=False).encode())
    if size > lim.max_payload_bytes:
        raise JobRejected("input", f"job is {size} bytes, limit {lim.max_payload_bytes}")
    if job.tier is not None and job.tier not in config.tiers:
        raise JobRejected("tier", f"unknown tier {job.tier!r}; known: {', '.join(config.tiers)}")
    if job.model is not None and job.model not in config.models:
        raise JobRejected("model", f"unknown model {job.model!r}")
    if job.is_rules:
        rules.validate(job.kind, job.input or {}, lim)


def check_limits(job: Job, config: FleetConfig) -> None:
    """The config's limits on a parsed job; total like parse_job (only JobRejected)."""
    try:
        _check_limits(job, config)
    except JobRejected:
        raise
    except RecursionError:
        raise JobRejected("input", "nested too deeply to check") from None
    except Exception as exc:
        raise JobRejected("job", f"could not be checked ({type(exc).__name__})") from None


def validate_batch(items: Any, config: FleetConfig) -> list[Job]:
    """Every job of a batch parsed and checked, or JobRejected naming ``[i].field``.

    Bounded by count (``limits.max_batch``) and by total size (``limits.max_batch_bytes``),
    both checked as the batch is read, so a huge generator is never drained into memory.
    """
    lim = config.limits
    if isinstance(items, str | bytes | Mapping | Job) or not isinstance(items, Iterable):
        raise JobRejected("jobs", f"a batch is a list of jobs, not {type(items).__name__}")
    jobs: list[Job] = []
    total = 0
    it = iter(items)
    i = 0
    while True:
        try:
            data = next(it)
        except StopIteration:
            break
        except Exception as exc:
            raise JobRejected("jobs", f"the batch could not be read ({type(exc).__name__})") from None
        if i >= lim.max_batch:
            raise JobRejected("jobs", f"more than {lim.max_batch} jobs in one batch (limits.max_batch)")
        try:
            job = parse_job(data, lim)
            check_limits(job, config)
            # Scanned, so dumping cannot fail; counted like the single-job payload limit.
            total += len(job.model_dump_json())
        except JobRejected as exc:
            raise JobRejected(f"[{i}].{exc.field}", exc.message) from None
        if total > lim.max_batch_bytes:
            raise JobRejected(
                "jobs", f"batch is over {lim.max_batch_bytes:,} bytes (limits.max_batch_bytes)"
            )
        jobs.append(job)
        i += 1
    return jobs


class Dispatcher:
    """Routes and enqueues jobs. Thread-safe; one per process is plenty."""

    STATE_TTL_S = 1.0

    def __init__(
        self,
        config: FleetConfig | None = None,
        *,
        client: redis.Redis | None = None,
        app: Celery | None = None,
        policy: Policy | None = None,
        fast_publish: bool | None = None,
    ) -> None:
        self.config = config or get_config()
        own_redis, own_app = client is None, app is None
        self.redis = client or redis_client(self.config)
        self.app = app or make_celery(self.config)
        # The learning loop's policy: memory and promoted versions when the config asks.
        self.policy = policy or fleet_policy(self.config, self.redis)
        self.results = ResultStore(self.redis, self.config)
        self.breaker = Breaker(self.redis, self.config)
        self.durable = DurableSubmit(self.config, self.redis)
        self.open = OpenJobs(self.redis, self.config)
        self._state: tuple[float, FleetState] | None = None
        self._lock = threading.Lock()
        # The door (broker.Door) writes to the store's Redis, so it is only sure to be the
        # broker when both were built here from the one config; else kombu publishes.
        if fast_publish is None:
            fast_publish = own_redis and own_app
        self.door: Door | None = Door(self.app, self.redis, self.config) if (
            fast_publish and Door.usable(self.app)) else None

    @property
    def r(self) -> redis.Redis:
        """The old name of :attr:`redis`, kept while the HTTP API still reads it."""
        return self.redis

    def fleet_state(self) -> FleetState:
        """Queue depths, live workers, service times and open breakers, cached for 1 s."""
        with self._lock:
            if self._state and time.monotonic() - self._state[0] < self.STATE_TTL_S:
                return self._state[1]
        tiers = list(self.config.tiers)
        pipe = self.redis.pipeline(transaction=False)
        for t in tiers:
            pipe.llen(t)
        pipe.hgetall(keys.service_times(self.config))
        *depths, svc = pipe.execute()
        workers: dict[str, int] = {}
        for w in live_workers(self.redis, self.config):
            for q in w.get("queues", []):
                workers[q] = workers.get(q, 0) + int(w.get("concurrency") or 1)
        state = FleetState(
            queue_depth=dict(zip(tiers, (int(d) for d in depths), strict=True)),
            live_workers=workers,
            service_time_s={t: float(v) for t, v in (svc or {}).items()},
            open_hosts=self.breaker.open_hosts(),
            # The policy's budget stage steers a job off a tier its budgets cannot pay for.
            budgets=BudgetBook(self.redis, self.config).left(),
        )
        with self._lock:
            self._state = (time.monotonic(), state)
        return state

    def _with_session(self, state: FleetState, job: Job) -> FleetState:
        if not job.session or self.config.policy.session_memory == 0:
            return state
        recent = self.redis.lrange(keys.session(self.config, job.session), 0,
                               self.config.policy.session_memory - 1)
        if not recent:
            return state
        return FleetState(
            queue_depth=state.queue_depth, live_workers=state.live_workers,
            service_time_s=state.service_time_s, open_hosts=state.open_hosts,
            budgets=state.budgets,
            session_tiers={job.session: list(reversed(recent))},
        )

    def _remember_session(self, pipe: Any, job: Job, route: Route) -> None:
        if job.session and self.config.policy.session_memory:
            k = keys.session(self.config, job.session)
            pipe.lpush(k, route.kind.value)
            pipe.ltrim(k, 0, self.config.policy.session_memory - 1)
            pipe.expire(k, 24 * 3600)

    def prepare(self, data: Job | Mapping[str, Any]) -> tuple[Job, Route]:
        job = parse_job(data, self.config.limits)
        check_limits(job, self.config)
        route = self.policy.route(job, self._with_session(self.fleet_state(), job))
        return job, route

    def route(self, data: Job | Mapping[str, Any]) -> Route:
        return self.prepare(data)[1]

    def submit(self, data: Job | Mapping[str, Any]) -> Handle:
        """Validate, route, admit and publish one job; returns once it is enqueued.

        The same id submitted again with the same body is the same job: nothing new is
        published, and the handle names the job already in the fleet. The same id with
        another body is refused (``JobRejected("id", ...)``).
        """
        job, route = self.prepare(data)
        delivery = Delivery(job=job, route=route)
        [verdict] = self._admit_and_publish([delivery])
        if verdict == "conflict":
            raise _conflict(job.id)
        if verdict == "new":
            self.durable.after_publish(1)  # reliability.durable_submit: on disk/replicas first
        if job.session:
            pipe = self.redis.pipeline(transaction=False)
            self._remember_session(pipe, job, route)
            pipe.execute()
        return Handle(id=job.id, route=route)

    def submit_many(self, items: Iterable[Job | Mapping[str, Any]]) -> list[Handle]:
        """Validate and route everything first (so a bad job rejects the batch before
        anything is enqueued), then publish in one pipelined batch."""
        jobs = validate_batch(items, self.config)
        state = self.fleet_state()
        if any(j.session for j in jobs):
            routes = [self.policy.route(j, self._with_session(state, j)) for j in jobs]
        else:
            routes = self.policy.route_many(jobs, state)
        # One job per id: a repeat with the same body is collapsed, another body refused.
        first: dict[str, int] = {}
        unique: list[Delivery] = []
        for i, (job, route) in enumerate(zip(jobs, routes, strict=True)):
            seen = first.get(job.id)
            if seen is None:
                first[job.id] = len(unique)
                unique.append(Delivery(job=job, route=route))
            elif OpenJobs.digest(unique[seen].job) != OpenJobs.digest(job):
                raise JobRejected(f"[{i}].id", f"job id {job.id!r} appears twice in the batch "
                                                "with different bodies")
        verdicts = self._admit_and_publish(unique)
        fresh = sum(v == "new" for v in verdicts)
        for d, verdict in zip(unique, verdicts, strict=True):
            if verdict == "conflict":
                # Admitted siblings stay open (through the door they are already published;
                # on the kombu path the repair sweep sends them); the caller learns which
                # id was refused.
                raise _conflict(d.job.id)
        self.durable.after_publish(fresh)  # reliability.durable_submit
        pipe = self.redis.pipeline(transaction=False)
        for job, route in zip(jobs, routes, strict=True):
            self._remember_session(pipe, job, route)
        pipe.execute()
        return [Handle(id=j.id, route=r) for j, r in zip(jobs, routes, strict=True)]

    def _admit_and_publish(self, deliveries: list[Delivery]) -> list[str]:
        """Admission verdicts in order; every 'new' delivery is published before this returns.

        Through the door: one round trip for the batch (admission and LPUSH per job in
        one script). Else store admission, then kombu publishes the new ones in a batch.
        """
        if self.door is not None:
            verdicts = self.door.admit(deliveries)
        else:
            verdicts = self.open.admit(deliveries)
            if "conflict" in verdicts:
                return verdicts  # as before: nothing of a refused batch is published
            fresh = [d for d, v in zip(deliveries, verdicts, strict=True) if v == "new"]
            if len(fresh) == 1:
                send(self.app, fresh[0])
            elif fresh:
                with self.app.producer_or_acquire() as producer, producer.batch():
                    for d in fresh:
                        send(self.app, d, producer=producer)
        self._queued([d for d, v in zip(deliveries, verdicts, strict=True) if v == "new"])
        return verdicts

    def _queued(self, sent: list[Delivery]) -> None:
        """Count what was just published into the cached queue depths, so the load stage
        sees the queue this dispatcher is building within the state's 1 s cache."""
        if not sent:
            return
        with self._lock:
            if self._state is None:
                return
            at, st = self._state
            depth = dict(st.queue_depth)
            for d in sent:
                depth[d.tier] = depth.get(d.tier, 0) + 1
            # replace, not a new FleetState: every other field (the budgets' room among
            # them) must survive, or the budget stage is blind for the rest of the second.
            self._state = (at, dataclasses.replace(st, queue_depth=depth))

    def result(self, job_id: str, timeout: float | None = None) -> Result:
        """Wait for a job's final result (``timeout`` None: look once, don't wait)."""
        return self.results_for([job_id], timeout)[0]

    def results_for(self, job_ids: list[str], timeout: float | None = None,
                    on_progress: Any = None) -> list[Result]:
        """Final results of ``job_ids`` in order (``timeout`` None: look once, don't wait)."""
        if timeout is not None and math.isnan(timeout):
            # NaN is never past a deadline: the wait would poll Redis for ever.
            raise ValueError("timeout must be a number of seconds (or None), not NaN")
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.results.wait(job_ids, deadline, on_progress=on_progress)

    def status(self) -> dict[str, Any]:
        state = self.fleet_state()
        parking = Parking(self.redis, self.config)
        workers = live_workers(self.redis, self.config)
        st = {
            "queues": [
                {"tier": t, "place": tc.place, "depth": state.queue_depth.get(t, 0),
                 "workers": state.live_workers.get(t, 0)}
                for t, tc in self.config.tiers.items()
            ],
            "workers": [{"node": w["node"], "queues": w["queues"], "busy": len(w["tags"]),
                         "host": w.get("host")} for w in workers],
            "in_flight": int(self.redis.hlen(keys.UNACKED)),
            "hosts": breaker_table(self.breaker),
            "parked": parking.parked(),
            # Producers read this (the API keeps a named one to its own jobs): a dead
            # letter's reason (a host's error may quote the job) as ``dlq list`` shows
            # it, a confidential job's words scrubbed.
            "dead_letters": [{"id": d["id"], "reason": shown_dead_letter(d, self.config)["reason"]}
                             for d in parking.dead()],
            "open_jobs": self.open.count(),
            "repaired": int(self.redis.get(keys.stats(self.config, "repaired")) or 0),
            "repaired_dead": int(self.redis.get(keys.stats(self.config, "repaired_dead")) or 0),
        }
        # One definition of every number (nodes, processes, busy, parked rows): the CLI,
        # the API and the metrics all read it from fleetnumbers.
        return status_view(st, workers, self.config)


def _conflict(job_id: str) -> JobRejected:
    return JobRejected("id", f"job {job_id!r} already exists with a different body: "
                             "give the new job its own id")


_default: Dispatcher | None = None
_default_lock = threading.Lock()


def default_dispatcher() -> Dispatcher:
    global _default
    with _default_lock:
        if _default is None:
            _default = Dispatcher()
        return _default
