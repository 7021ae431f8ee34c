"""How one delivery of a job is carried out on a worker.

    stored result? -> return it (a redelivery is stored and billed once)
    rules tier     -> run the executor, record, store
    model tier     -> cache -> each host of the tier: breaker + health -> backend
                      host failure      -> breaker, next host, then the next allowed tier
                      request error     -> fail with the host's message (no pointless fallback)
                      poor answer       -> escalate one tier up, within privacy
    nowhere to go  -> park (a sweeper retries with backoff) -> dead letters after N parks

``Runner.run`` says what happened by returning it: :class:`Stored` (a result is
stored: succeeded, failed, dead or answered from the cache), :class:`Moved` (the
job was published to another tier; this delivery stores nothing) or
:class:`Parked`. Only :mod:`tierfleet.worker` knows Celery and turns ``Moved``
into ``Ignore``.

Every move to another queue publishes the new message *before* this delivery
returns, and the delivery is acknowledged only when it returns (acks_late): a
crash in between gives a duplicate, never a loss, and duplicates are absorbed by
the job-id keyed result store and ledger.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from . import finish, keys, metrics, rules, tokens
from .backends import make_backend
from .backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Completion,
    CompletionRequest,
    ContextTooLong,
    ExternalIdStore,
    QuotaExhausted,
    RateLimited,
)
from .budgets import BudgetBook, Hold, Refusal
from .cache import AnswerCache
from .config import FleetConfig
from .envelope import Delivery
from .fleet import DEFAULT_OUT_TOKENS, FleetView
from .flow import Flow, Slot
from .health import Breaker, HealthChecker
from .jobs import Attempt, Job, Reason, Result, Status
from .ledger import InFlight, Ledger, Recorded
from .quality import check
from .shown import scrub
from .store import Leases, OpenJobs, Parking, ResultStore
from .streams import TokenSink

__all__ = ["REDIS_BLINKS", "Duplicate", "Moved", "Outcome", "Parked", "Publish", "RedisExternalIds",
           "Runner", "Stored"]

log = logging.getLogger("tierfleet.worker")


def _shown(job: Job, text: str | None) -> str | None:
    """``text`` as the ledger, the breaker and log lines may keep it: a host's message or
    a rule's can quote the job, so a confidential job's words are scrubbed (shown.scrub);
    any other job's text is kept whole. The job's result keeps the full text."""
    if text is None or job.privacy.value != "confidential":
        return text
    return scrub(text, job.model_dump(mode="json"))


T = TypeVar("T")
# Writes a ledger record settles, queued in its transaction: (pipe, priced attempt, job cost).
Then = Callable[[Any, Attempt, float], None]

# Errors that mean "Redis is not answering right now", as opposed to a bug in a command.
REDIS_BLINKS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)

# Publishes a delivery on its tier's queue (``broker.send`` in a worker, a list in tests).
Publish = Callable[[Delivery], None]


@dataclass(frozen=True)
class Stored:
    """A result is stored for the job: succeeded, failed, dead, or answered from the cache."""

    result: Result


@dataclass(frozen=True)
class Moved:
    """The job was published to tier ``to`` before this delivery returned; nothing is stored."""

    to: str
    why: str
    delivery: Delivery


@dataclass(frozen=True)
class Parked:
    """No allowed tier is up: the job waits in the parked set until ``due`` (epoch seconds)."""

    result: Result
    due: float


@dataclass(frozen=True)
class Duplicate:
    """Another live delivery of this job holds its lease (is calling a host): this copy
    stores nothing and is acknowledged; the holder's own message carries the job."""

    why: str


Outcome = Stored | Moved | Parked | Duplicate


class RedisExternalIds(ExternalIdStore):
    """Remote job ids (Runpod) under ``P:external:{job_id}``, so a redelivery resumes the remote job."""

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config

    def _key(self, job_id: str) -> str:
        return keys.external_id(self.config, job_id)

    def get(self, job_id: str) -> str | None:
        return self.redis.get(self._key(job_id))

    def set(self, job_id: str, external_id: str) -> None:
        self.redis.set(self._key(job_id), external_id, ex=self.config.reliability.visibility_timeout_s)

    def clear(self, job_id: str) -> None:
        self.redis.delete(self._key(job_id))


class Runner:
    """Carries out one delivery of a job on a worker and says what happened (see the module doc).

    Called by :func:`tierfleet.worker.run_job` once per delivery (unit tests call it
    directly with fakeredis, :class:`~tierfleet.backends.stub.StubBackend` and a list
    as ``publish``). It writes results (:class:`ResultStore`), parked and dead jobs
    (:class:`Parking`), the bill (:class:`Ledger`), cached answers, breakers and
    Runpod job ids; it owns no key of its own. Guarantees: a job whose result is
    final is neither run nor billed again; a job moves only to tiers its privacy
    allows; a moved job is published before :meth:`run` returns (so a crash gives a
    duplicate, never a loss); a job escalates at most once.

    ``backend_for(host)`` builds the client of a configured host; the default
    builds the real one from the config, once per host.
    """

    def __init__(self, config: FleetConfig, client: redis.Redis, publish: Publish, *,
                 backend_for: Callable[[str], Backend] | None = None) -> None:
        self.config = config
        self.redis = client
        self.publish = publish
        self.fleet = FleetView(config)
        self.results = ResultStore(client, config)
        self.parking = Parking(client, config)
        self.open = OpenJobs(client, config)
        self.leases = Leases(client, config)
        self.inflight = InFlight(client, config)
        self._owner = f"local|{os.getpid()}|{threading.get_ident()}"
        self.ledger = Ledger(client, config)
        self.cache = AnswerCache(client, config)
        self.breaker = Breaker(client, config)
        self.external_ids = RedisExternalIds(client, config)
        self.budgets = BudgetBook(client, config)
        self._hold: Hold | None = None  # the budget reservation of the call under way
        self.flow = Flow(client, config)
        self._slot: Slot | None = None  # the flow-control slot of the call under way
        self._backend_for = backend_for or self._make_backend
        self._backends: dict[str, Backend] = {}
        self.health = HealthChecker(self.breaker, self.backend, config)
        self._policy_version: str | None = None  # of the delivery under way: every record names it
        from .learning import Learner  # labels, shadow samples: hooks in _accept (issue #15)

        self.learning = Learner(self)
        self._finish = finish.script(client)
        self._sleep: Callable[[float], None] = time.sleep  # the wait between record retries

    def _make_backend(self, host: str) -> Backend:
        return make_backend(host, self.config.hosts[host], external_ids=self.external_ids,
                            health_timeout_s=self.config.reliability.health_timeout_s)

    def backend(self, host: str) -> Backend:
        b = self._backends.get(host)
        if b is None:
            b = self._backends[host] = self._backend_for(host)
        return b

    def run(self, d: Delivery, *, owner: str | None = None) -> Outcome:
        """Carry out one delivery. ``owner`` names this worker process for the job's lease
        (``node|pid|thread``; the worker passes it, tests may leave the default)."""
        self._owner = owner or f"local|{os.getpid()}|{threading.get_ident()}"
        self._policy_version = d.first_route.policy_version
        rules_tier = d.tier in self.config.tiers and self.config.tiers[d.tier].place == "rules"
        earlier: dict[str, str] | None = None
        kept_attempt: int | None = None
        if rules_tier:
            # The ledger hash comes with the result, so the job ends in one more round trip.
            stored, earlier = finish.peek(self.redis, self.config,
                                          self.ledger.job_key(d.job.id), d.job.id)
        else:
            stored, kept_attempt = self.open.result_and_attempt(d.job.id)
        if stored is not None and stored.finished:
            log.info("job %s already %s; redelivery ignored", d.job.id, stored.status.value)
            return Stored(stored)
        if not rules_tier and kept_attempt is not None and kept_attempt > d.attempt:
            # This attempt already ended (moved, escalated, parked) and its worker died
            # before acking it: running it again would call a host for an answer the job
            # no longer waits for. The kept delivery carries the job on.
            log.info("job %s: attempt %d superseded by attempt %d; redelivery ignored",
                     d.job.id, d.attempt, kept_attempt)
            return Duplicate(f"attempt {d.attempt} superseded by attempt {kept_attempt}")
        if not self.config.tier_allowed(d.tier, d.job.privacy.value):
            # Defence in depth: a hand-crafted message cannot push a job past privacy.
            return self._fail(d, "tier not allowed for this job")
        if rules_tier:
            return self._run_rules(d, earlier)
        return self._run_model(d)

    def crashed(self, kwargs: Mapping[str, Any], exc: Exception) -> None:
        """A bug, not a fault: store a failed result so the job never vanishes silently."""
        try:
            d = Delivery.from_kwargs(kwargs)
        except Exception:
            return
        self._fail(d, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")

    def _run_rules(self, d: Delivery, earlier: dict[str, str] | None = None) -> Stored:
        job = d.job
        t0 = time.perf_counter()
        error = None
        output: Any = None
        try:
            output = rules.execute(job.kind, job.input or {}, self.config)
        except rules.RuleFailed as exc:
            error = str(exc)
        except Exception as exc:  # an executor bug must fail the job, never the worker
            if job.privacy.value == "confidential":
                # A traceback quotes the failing values: for this job, its input.
                log.error("rules executor crashed on job %s: %s", job.id, type(exc).__name__)
            else:
                log.exception("rules executor crashed on job %s", job.id)
            error = f"internal error in {job.kind.value}: {type(exc).__name__}"
        latency = time.perf_counter() - t0
        tin = tokens.count(job.text() or _json_text(job.input))
        att = Attempt(
            job_id=job.id, attempt=d.attempt, workflow=job.workflow, kind=job.kind.value,
            tier=d.tier, tokens_in=tin, tokens_estimated=True, latency_s=latency,
            outcome="failed" if error else "ok", fallbacks=len(d.trail), error=_shown(job, error),
            privacy=job.privacy.value, ts=time.time(), policy_version=self._policy_version,
        )
        result = Result(
            job_id=job.id, status=Status.FAILED if error else Status.SUCCEEDED, kind=job.kind.value,
            output=output, tier=d.tier, latency_s=latency, attempts=d.attempt,
            trail=[*d.trail, d.tier], error=error, tokens_in=tin, tokens_estimated=True,
        )
        if earlier is not None:
            # Record, metrics and result in one script (finish.py), if nobody recorded
            # this job since it was read; else the ordinary path below decides.
            planned = self.ledger.plan(att, earlier, also=self._also)
            if planned is not None:
                stored = finish.finish(self._finish, self.config, planned, result)
                if stored is not None:
                    return Stored(stored)
        self._bill(att)
        return Stored(self.results.save(result))

    def _host_order(self, d: Delivery, model: str) -> list[tuple[str, int]]:
        """(host, window) of the tier's hosts serving ``model``, the route's host first."""
        fits = [(h.name, h.window) for h in self.fleet.hosts(d.tier, model)]
        fits.sort(key=lambda fit: fit[0] != d.route.host)  # stable: config order otherwise
        return fits

    def _request(self, job: Job, model: str) -> CompletionRequest:
        msgs = [ChatMessage(role=m.role, content=m.content, images=m.images,
                            tool_calls=m.tool_calls, tool_call_id=m.tool_call_id)
                for m in job.chat_messages()]
        return CompletionRequest(
            model=model, messages=msgs, max_tokens=job.max_tokens, json_output=job.json_output,
            job_id=job.id, json_schema=job.json_schema if self._constrains(model) else None,
            tools=job.tools, tool_choice=job.tool_choice,
        )

    def _constrains(self, model: str) -> bool:
        """Whether ``model`` decodes to a JSON Schema (config ``json_schema``); without it
        the job asks for plain JSON and the schema is still checked on the answer."""
        mc = self.config.models.get(model)
        return mc.json_schema if mc is not None else True

    def _run_model(self, d: Delivery) -> Outcome:
        route = d.route
        model = route.model or self.fleet.model_for(d.tier, route.kind.value)
        if model is None:
            return self._fall_back(d, f"tier {d.tier} has no model")
        cached = self._from_cache(d, model)
        if cached is not None:
            return cached
        token = self.leases.acquire(d.job.id, self._owner, d.attempt)
        if token is None:
            return Duplicate("another live delivery of this job is calling a host")
        try:
            return self._try_hosts(d, model)
        finally:
            # On a Redis blink the lease expires; a takeover checks the owner's heartbeat.
            with contextlib.suppress(redis.RedisError):
                self.leases.release(d.job.id, token)
            self._release_hold()
            self._end_slot()

    def _try_hosts(self, d: Delivery, model: str) -> Outcome:
        route = d.route
        request = self._request(d.job, model)
        problems: list[str] = []
        need_window = 0
        refused_here = False  # a host refused this worker's key: not the job's or host's fault
        for host, window in self._host_order(d, model):
            if route.tokens_in and route.tokens_in > window:
                problems.append(f"{host}: prompt larger than its window")
                continue
            ok, why = self.health.available(host)
            if not ok:
                problems.append(f"{host}: {why}")
                refused_here = refused_here or self.health.local_fault(host)
                continue
            wait = self._take_slot(d, host)
            if wait is not None:
                if self._may_wait(d, wait):
                    return self._wait_for(d, host, wait)
                problems.append(f"{host}: rate limited for {wait:.2f}s, beyond the job's latency budget")
                continue
            refused = self._reserve(d, host, model)
            if refused is not None:
                return self._over_budget(d, model, refused)
            try:
                completion, call = self._complete(d, host, model, request)
            except BackendError as exc:
                self._end_slot()
                if isinstance(exc, RateLimited) and exc.reached:
                    self._record(d, host, model, None, outcome="host_error", error=str(exc),
                                 call=getattr(exc, "call", None))
                    wait = exc.retry_after if exc.retry_after is not None else 1.0
                    if self._may_wait(d, wait):  # a rate limit is waited out, not a fault
                        return self._wait_for(d, host, wait)
                    problems.append(f"{host}: rate limited for {wait:.2f}s, beyond the job's latency budget")
                    continue
                if not exc.fallback:
                    # Bad request, auth, model missing: every other host would say the same.
                    self._record(d, host, model, None, outcome="failed", error=str(exc),
                                 call=getattr(exc, "call", None))
                    return self._fail(d, str(exc), host=host, model=model)
                if exc.reached:
                    self._record(d, host, model, None, outcome="host_error", error=str(exc),
                                 call=getattr(exc, "call", None))
                else:
                    # A note left behind would be settled as a lost call: billed, never made.
                    call = getattr(exc, "call", None)
                    self._through_blinks(f"job {d.job.id}: forgetting unsent call {call}",
                                         functools.partial(self.inflight.forget, call))
                problems.append(self._host_failed(d.job, host, exc))
                if isinstance(exc, ContextTooLong):
                    # Our count said it fits, the host says not: only a larger window helps.
                    need_window = max(need_window, window, route.tokens_in or 1)
                continue
            reported = (None if completion.tokens_in is None or completion.tokens_out is None
                        else completion.tokens_in + completion.tokens_out)
            self._end_slot(reported)
            # Between the answer and its record nothing may raise a Redis blink (the worker
            # would call the host again and this call would wait for the reaper's deadline):
            # a breaker reset lost to a blink only waits for the next success.
            with contextlib.suppress(*REDIS_BLINKS):
                self.breaker.success(host)
            return self._accept(d, host, model, completion, call)
        if refused_here:
            # Moving on would bill a pricier tier for this worker's misconfiguration: park,
            # so the job re-enters its own route, where a well-configured worker takes it.
            why = "; ".join(problems)
            self._record(d, None, d.route.model, None, outcome="fallback", error=why)
            return self._park(d, why)
        return self._fall_back(d, "; ".join(problems) or f"no host of {d.tier} serves {model}",
                               need_window=need_window)

    # -- budgets: reserve before a rented or paid call, spend with its record, release after --

    def _estimate(self, d: Delivery, host: str, model: str) -> float:
        """The call's cost if it uses its whole output allowance (what the dispatcher estimates)."""
        tin = d.route.tokens_in or tokens.count(d.job.text())
        return self.fleet.cost(d.tier, model, tin, d.job.max_tokens or DEFAULT_OUT_TOKENS)

    def _reserve(self, d: Delivery, host: str, model: str) -> Refusal | None:
        """Hold the call's estimate on every budget covering the job; the Refusal if one is full."""
        self._release_hold()
        if self.config.tiers[d.tier].place not in ("rented", "paid"):
            return None
        timeout = float(self.config.hosts[host].timeout_s) + self.config.reliability.task_time_limit_s
        got = self.budgets.reserve(d.job, self._estimate(d, host, model), f"{d.job.id}:{d.attempt}",
                                   hold_s=timeout)
        if isinstance(got, Refusal):
            return got
        self._hold = got
        return None

    def _release_hold(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            with contextlib.suppress(redis.RedisError):  # its deadline frees it otherwise
                self.budgets.release(hold)

    def _over_budget(self, d: Delivery, model: str, refused: Refusal) -> Outcome:
        """A job whose budget is full: a cheaper allowed tier, a park until reset, or a refusal."""
        why = refused.reason
        action = refused.budget.on_exhausted
        if action == "reject":
            self._record(d, None, model, None, outcome="failed", error=why)
            return self._fail(d, f"{why} (on_exhausted = reject)")
        self._record(d, None, model, None, outcome="fallback", error=why)
        if action == "cheaper":
            rank = {"rules": 0, "local": 1, "rented": 2, "paid": 3}
            here = rank[self.config.tiers[d.tier].place]
            cheaper = [t for t in self._next_tiers(d, list(self.fleet.ladder))
                       if 0 < rank[self.config.tiers[t].place] < here]
            if cheaper:  # the strongest tier that costs less
                return self._move(d, max(cheaper, key=lambda t: self.fleet.rank.get(t, -1)), why)
        return self._park_until(d, why, refused.resets_at)

    def _park_until(self, d: Delivery, why: str, due: float) -> Parked:
        """Park until ``due`` (a budget's reset, a rate limit's free slot). Waiting is not a
        failure, so the job's park count (which ends in the dead letters) does not grow."""
        back = d.restarted(why)
        back = back.model_copy(update={"parks": d.parks})
        if back.route.model is None:
            model = self.fleet.model_for(back.tier, d.route.kind.value)
            back = back.model_copy(update={"route": back.route.model_copy(update={"model": model})})
        self.parking.park(back, 0, why)
        # Parking.park schedules by its backoff; this wait has a known end instead. A crash
        # before this line only brings the job back early, to park again.
        self.redis.zadd(self.parking.parked_index, {d.job.id: due}, xx=True)
        result = Result(job_id=d.job.id, status=Status.PARKED, kind=d.route.kind.value,
                        attempts=d.attempt, trail=[*d.trail, d.tier],
                        error=f"parked until {time.strftime('%H:%M:%S', time.localtime(due))}: {why}")
        self.results.save(result)
        return Parked(result, due)

    # -- flow control: a slot per call within the host's shared limits ------------------------

    def _take_slot(self, d: Delivery, host: str) -> float | None:
        """Take a call slot on ``host``'s flows; the seconds to wait when none is free."""
        self._end_slot()
        tin = d.route.tokens_in or tokens.count(d.job.text())
        hold = float(self.config.hosts[host].timeout_s) + 5.0
        got = self.flow.acquire(host, f"{d.job.id}:{d.attempt}:{os.urandom(3).hex()}",
                                tin + (d.job.max_tokens or DEFAULT_OUT_TOKENS), hold_s=hold)
        if isinstance(got, Slot):
            self._slot = got
            return None
        return got

    def _end_slot(self, reported_tokens: int | None = None) -> None:
        slot, self._slot = self._slot, None
        if slot is not None and slot.flows:
            with contextlib.suppress(redis.RedisError):  # the slot's deadline frees it otherwise
                self.flow.release(slot, reported_tokens)

    @staticmethod
    def _may_wait(d: Delivery, wait: float) -> bool:
        """Waiting fits when the job has no latency budget or the wait is inside it."""
        budget = d.job.latency_budget_s
        return budget is None or wait <= budget

    def _wait_for(self, d: Delivery, host: str, wait: float) -> Parked:
        """Park the job for the time the limit needs (no worker sleeps or spins on it)."""
        return self._park_until(d, f"{host}: rate limit, a slot is free in {wait:.2f}s",
                                time.time() + wait)

    def _host_failed(self, job: Job, host: str, exc: BackendError) -> str:
        """Feed the breaker for a failure another place may fix; returns the problem line.
        The breaker's reason is on every operator's screen (``status``, the API): a host
        message quoting a confidential job is scrubbed of its words there."""
        if isinstance(exc, ContextTooLong):
            return f"{host}: context too long ({exc.message})"  # the host is fine
        if isinstance(exc, RateLimited):
            return f"{host}: rate limited ({exc.message})"  # the limiter knows; the host is fine
        if isinstance(exc, QuotaExhausted):
            self.breaker.failure(host, _shown(job, f"quota exhausted: {exc.message}") or "",
                                 hard_s=self.config.reliability.breaker_open_s * 20)
            return f"{host}: quota exhausted"
        self.breaker.failure(host, _shown(job, exc.message) or "")
        self.health.forget(host)
        return f"{host}: {type(exc).__name__}: {exc.message}"

    def _complete(self, d: Delivery, host: str, model: str,
                  request: CompletionRequest) -> tuple[Completion, str]:
        """Call ``host`` (waiting out one short Retry-After); every call is in the ledger.

        Each call is announced first (``P:ledger:inflight``): if this worker dies before
        recording what came back, the reaper records the call as ``lost_call``, so the
        ledger holds every call a provider may bill. A failing call's exception carries
        its call id (``exc.call``) for the caller's record.
        """
        backend = self.backend(host)
        call = self.inflight.begin(d, host, model, self._owner)
        if d.job.stream:
            # A streamed job's tokens go to its Redis Stream as the host produces them.
            request = request.model_copy(update={
                "on_token": TokenSink(self.redis, self.config, d.job.id).attempt(d.tier, host)})
        try:
            return backend.complete(request), call
        except RateLimited as exc:
            exc.call = call  # type: ignore[attr-defined]
            wait = exc.retry_after if exc.retry_after is not None else 1.0
            # Every worker now waits for this host, through the same limiter (best effort:
            # a Redis blink here must not keep this call from its record).
            with contextlib.suppress(*REDIS_BLINKS):
                self.flow.block(host, time.time() + wait)
            if wait > self.config.reliability.retry_after_budget_s:
                raise
            self._record(d, host, model, None, outcome="host_error", error=str(exc), call=call)
        except BackendError as exc:
            exc.call = call  # type: ignore[attr-defined]
            raise
        time.sleep(wait)
        call = self.inflight.begin(d, host, model, self._owner)
        try:
            return backend.complete(request), call
        except BackendError as exc:
            exc.call = call  # type: ignore[attr-defined]
            raise

    def _accept(self, d: Delivery, host: str, model: str, c: Completion, call: str) -> Outcome:
        job, route = d.job, d.route
        verdict = check(job, c)
        # One escalation per job: a second poor answer is still the best we have.
        # Up means the policy's ladder (FleetView.above), so the worker escalates where the
        # policy would route a harder job, whatever order the config file lists tiers in.
        higher = (None if verdict.ok or d.escalated
                  else next(iter(self._next_tiers(d, self.fleet.above(d.tier))), None))
        error = None if verdict.ok else verdict.reason
        if higher is not None:
            # The record and the kept delivery it moves on as, in one transaction: a worker
            # killed in between would leave this attempt to run (and bill) again.
            moved = self._moved(d, higher, f"escalated: {verdict.reason}", escalated=True)
            self._record(d, host, model, c, outcome="escalated", error=error, call=call,
                         then=lambda pipe, a, cost: self.open.update(moved, pipe))
            # Published before the label is written: a Redis blink in between then costs a
            # label, not a wait for the repair sweep to send the job on.
            out = self._publish(d, moved, f"escalated: {verdict.reason}")
            self.learning.escalated(d, model, verdict.reason, call)  # the small answer was poor
            return out

        def answer(a: Attempt, cost: float) -> Result:
            return Result(
                job_id=job.id, status=Status.SUCCEEDED, kind=route.kind.value, output=c.text,
                text=c.text, tier=d.tier, host=host, model=model, tokens_in=a.tokens_in,
                tokens_out=a.tokens_out, tokens_estimated=a.tokens_estimated,
                cost_usd=cost, latency_s=c.latency_s, attempts=d.attempt,
                trail=[*d.trail, d.tier], simulated=c.simulated,
                finish_reason=c.finish_reason, served_model=c.model, tool_calls=c.tool_calls,
                reasons=route.explain(),
            )

        result: Result | None = None

        def save(pipe: Any, a: Attempt, cost: float) -> None:
            # The record and the result in one transaction: a worker killed after the
            # record can no longer leave the job open, for a redelivery to call the host
            # again and bill a second answer to the same attempt.
            nonlocal result
            result = answer(a, cost)
            self.results.save_in(pipe, result)

        att, recorded = self._record(d, host, model, c, outcome="ok", error=error, call=call,
                                     then=save)
        if recorded.then and result is not None:
            stored = self.results.saved(result, recorded.then[-1])
        else:
            # Recorded before (its reply lost to a Redis blink): the result may or may not
            # have landed with it; saving again keeps the first final one.
            result = answer(att, recorded.job_cost_usd)
            stored = self.results.save(result)
        if stored is result and verdict.ok:
            self.cache.put(job, model, {"text": c.text, "host": host, "tier": d.tier,
                                        "simulated": c.simulated})
        if stored is result:
            self.learning.answered(d, model, c, call)  # feedback anchor, shadow sample or verdict
        return Stored(stored)

    def _from_cache(self, d: Delivery, model: str) -> Stored | None:
        job, route = d.job, d.route
        hit = self.cache.get(job, model)
        if hit is None:
            return None
        answer = hit.answer
        text = answer.get("text", "")
        self._bill(Attempt(
            job_id=job.id, attempt=d.attempt, workflow=job.workflow, kind=route.kind.value,
            tier=d.tier, host=answer.get("host"), model=model,
            tokens_in=route.tokens_in or tokens.count(job.text()),
            tokens_out=tokens.count(text), tokens_estimated=True, outcome="cached",
            cache_hit=True, fallbacks=len(d.trail), privacy=job.privacy.value, ts=time.time(),
        ))
        result = Result(
            job_id=job.id, status=Status.SUCCEEDED, kind=route.kind.value, output=text, text=text,
            tier=d.tier, host=answer.get("host"), model=model, attempts=d.attempt,
            trail=[*d.trail, d.tier], cache_hit=True, simulated=bool(answer.get("simulated")),
        )
        return Stored(self.results.save(result))

    def _next_tiers(self, d: Delivery, candidates: list[str]) -> list[str]:
        """``candidates`` this job may still move to: privacy, vision, not tried yet."""
        return self.fleet.allowed_next(candidates, d.job.privacy.value, d.route.kind.value,
                                       exclude={*d.trail, d.tier})

    def _fall_back(self, d: Delivery, why: str, need_window: int = 0) -> Moved | Parked | Stored:
        chain = d.route.fallbacks or self.config.tiers[d.tier].fallback
        options = self._next_tiers(d, chain)
        if need_window:
            options = [t for t in options if self.fleet.largest_window(t) > need_window]
        # No host answered this attempt: the record names none (``why`` says who failed how).
        self._record(d, None, d.route.model, None, outcome="fallback", error=why)
        if options:
            return self._move(d, options[0], why)
        return self._park(d, why)

    def _move(self, d: Delivery, tier: str, why: str, *, escalated: bool = False) -> Moved:
        """Publish the job to ``tier``; the new delivery carries this tier in its trail."""
        moved = self._moved(d, tier, why, escalated=escalated)
        self.open.update(moved)  # the kept copy first: a lost publish is then repairable
        return self._publish(d, moved, why)

    def _moved(self, d: Delivery, tier: str, why: str, *, escalated: bool = False) -> Delivery:
        """The delivery that carries the job on to ``tier``."""
        route = d.route
        tc = self.config.tiers[tier]
        new_trail = [*d.trail, d.tier]
        rest = [t for t in route.fallbacks if t not in {*new_trail, tier}]
        # Privacy-filtered here too, so no screen that shows the route (Flower, dead
        # letters) lists a tier this job may never reach.
        chain = self.fleet.allowed_next(rest or list(tc.fallback), d.job.privacy.value,
                                        route.kind.value, exclude={*new_trail, tier})
        new_route = route.model_copy(update={
            "tier": tier, "model": self.fleet.model_on(tier, route.kind.value, d.job.model),
            "host": None,
            "fallbacks": chain,
            "reasons": [*route.reasons, Reason(stage="worker", text=f"{d.tier} -> {tier}: {why}")],
        })
        return d.moved(new_route, escalated=escalated)

    def _publish(self, d: Delivery, moved: Delivery, why: str) -> Moved:
        """Send ``moved``, already kept as the job's open delivery (a lost publish is repaired)."""
        self.publish(moved)
        log.warning("job %s moved %s -> %s: %s", d.job.id, d.tier, moved.tier, _shown(d.job, why))
        return Moved(moved.tier, why, moved)

    def _park(self, d: Delivery, why: str) -> Parked | Stored:
        kind = d.route.kind
        if d.parks >= self.config.reliability.max_attempts:
            self.parking.bury(d, f"gave up after {d.parks} parks: {why}")
            result = Result(job_id=d.job.id, status=Status.DEAD, kind=kind.value,
                            attempts=d.attempt, trail=[*d.trail, d.tier], error=why)
            return Stored(self.results.save(result))
        # Re-enter on the dispatcher's route, so the job's own privacy-filtered chain is
        # tried again from its first tier, whichever tier it parked on.
        back = d.restarted(why)
        if back.route.model is None:
            model = self.fleet.model_for(back.tier, kind.value)
            back = back.model_copy(update={"route": back.route.model_copy(update={"model": model})})
        due = self.parking.park(back, d.parks, why)
        result = Result(job_id=d.job.id, status=Status.PARKED, kind=kind.value,
                        attempts=d.attempt, trail=[*d.trail, d.tier],
                        error=f"parked until {time.strftime('%H:%M:%S', time.localtime(due))}: {why}")
        self.results.save(result)
        return Parked(result, due)

    def _record(self, d: Delivery, host: str | None, model: str | None, c: Completion | None, *,
                outcome: str, error: str | None, call: str | None = None,
                then: Then | None = None) -> tuple[Attempt, Recorded]:
        """Bill one model attempt; returns it and what the ledger did (the job's cost so
        far included). ``then`` queues what the record settles in its transaction
        (:meth:`Ledger.record`)."""
        job = d.job
        estimated = c is None or c.tokens_in is None or c.tokens_out is None
        if c is None:  # nothing ran: no tokens, no time
            tin, tout = 0, 0
        else:
            tin = c.tokens_in if c.tokens_in is not None else tokens.count(job.text())
            tout = c.tokens_out if c.tokens_out is not None else tokens.count(c.text)
        att = Attempt(
            job_id=job.id, attempt=d.attempt, workflow=job.workflow, kind=d.route.kind.value,
            tier=d.tier, host=host, model=model, tokens_in=tin, tokens_out=tout,
            tokens_estimated=estimated and c is not None,
            latency_s=c.latency_s if c else 0.0,
            outcome=outcome,  # type: ignore[arg-type]
            fallbacks=len(d.trail), error=_shown(job, error), privacy=job.privacy.value,
            simulated=bool(c and c.simulated), ts=time.time(), call=call,
        )
        # Rented hosts bill the time they report (Runpod's executionTime), not our latency.
        recorded = self._bill(att, seconds=c.billed_seconds if c is not None else None, then=then)
        return att, recorded

    def _bill(self, att: Attempt, *, seconds: float | None = None,
              then: Then | None = None) -> Recorded:
        """Ledger, metrics and the end of the call's in-flight note in one transaction,
        only for a new record: a redelivery is billed and counted once. The ledger prices
        the attempt."""
        hold = self._hold
        if att.policy_version is None and self._policy_version:
            att = att.model_copy(update={"policy_version": self._policy_version})

        def also(pipe: Any, a: Attempt) -> None:
            metrics.add_attempt(pipe, self.config, a)
            if hold is not None:  # the budget's spend moves with the record, exactly once
                self.budgets.spend(pipe, hold, a.cost_usd)
            if a.call:
                self.inflight.end(a.call, pipe)

        if not att.call:
            return self.ledger.record(att, seconds=seconds, also=also, then=then)
        # A host call was made: its record must not be lost to a Redis blink. Raising here
        # would make the worker run the delivery again (a second host call) and leave this
        # one to the reaper, which settles a live owner's call only at its deadline (the
        # task time limit later), as a lost_call without its answer. The record is keyed
        # by the call id, so writing it again after a blink is a no-op if it had landed.
        return self._through_blinks(
            f"job {att.job_id}: recording host call {att.call}",
            lambda: self.ledger.record(att, seconds=seconds, also=also, then=then))

    def _through_blinks(self, what: str, write: Callable[[], T]) -> T:
        """``write`` retried over a Redis blink, for up to half the task time limit.

        For the writes that settle a host call (its record, or forgetting a call that
        never reached its host): after that the in-flight note stays, and the reaper
        settles it at its deadline.
        """
        delay, give_up = 0.1, time.monotonic() + self.config.reliability.task_time_limit_s / 2
        while True:
            try:
                return write()
            except REDIS_BLINKS as exc:
                if time.monotonic() > give_up:
                    raise
                log.warning("%s: redis unavailable (%s); retrying in %.1fs", what, exc, delay)
                self._sleep(delay)
                delay = min(delay * 2, 2.0)

    def _also(self, pipe: Any, a: Attempt) -> None:
        """What moves with every ledger record: the metrics, the end of the call's note."""
        metrics.add_attempt(pipe, self.config, a)
        if a.call:
            self.inflight.end(a.call, pipe)

    def _fail(self, d: Delivery, error: str, host: str | None = None,
              model: str | None = None) -> Stored:
        result = Result(job_id=d.job.id, status=Status.FAILED, kind=d.route.kind.value,
                        tier=d.tier, host=host, model=model, attempts=d.attempt,
                        trail=[*d.trail, d.tier], error=error)
        return Stored(self.results.save(result))


def _json_text(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, default=str)[:200_000]
