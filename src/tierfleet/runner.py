"""How one delivery of a job is carried out on a worker.

    stored result? -> return it (a redelivery is stored and billed once)
    rules tier     -> run the executor, record, store
    model tier     -> cache -> each host of the tier: breaker + health -> backend
                      host failure      -> breaker, next host, then the next allowed tier
                      request error     -> fail with the host's message (no pointless fallback)
                      poor answer       -> escalate one tier up, within privacy
    nowhere to go  -> park (a sweeper retries with backoff) -> dead letters after N parks

Every move to another queue publishes the new message *before* this delivery
returns, and the delivery is acknowledged only when it returns (acks_late): a
crash in between gives a duplicate, never a loss, and duplicates are absorbed by
the job-id keyed result store and ledger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from . import metrics, pricing, rules, tokens
from .backends import make_backend
from .backends.base import (
    Backend,
    BackendError,
    Completion,
    CompletionRequest,
    ContextTooLong,
    ExternalIdStore,
    HostDown,
    QuotaExhausted,
    RateLimited,
)
from .backends.base import ChatMessage as WireMessage
from .broker import key
from .cache import AnswerCache
from .config import FleetConfig
from .health import Breaker, HealthChecker
from .jobs import Attempt, Job, Reason, Result, Route, Status
from .ledger import Ledger
from .quality import check
from .store import Parking, ResultStore

log = logging.getLogger("tierfleet.worker")

Publish = Callable[[dict[str, Any], str], None]


class Rerouted(Exception):
    """This delivery handed the job on to another queue; nothing to store here."""

    def __init__(self, tier: str, why: str) -> None:
        super().__init__(f"rerouted to {tier}: {why}")
        self.tier = tier
        self.why = why


class RedisExternalIds(ExternalIdStore):
    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.r = client
        self.config = config

    def _k(self, job_id: str) -> str:
        return key(self.config, "external", job_id)

    def get(self, job_id: str) -> str | None:
        return self.r.get(self._k(job_id))

    def set(self, job_id: str, external_id: str) -> None:
        self.r.set(self._k(job_id), external_id, ex=self.config.reliability.visibility_timeout_s)

    def clear(self, job_id: str) -> None:
        self.r.delete(self._k(job_id))


def message(job: Job, route: Route, trail: list[str], attempt: int, parks: int = 0,
            escalated: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job": job.model_dump(mode="json"),
        "route": route.model_dump(mode="json"),
        "trail": trail,
        "attempt": attempt,
        "parks": parks,
    }
    if escalated:
        body["escalated"] = True
    return body


class Runner:
    def __init__(self, config: FleetConfig, client: redis.Redis, publish: Publish) -> None:
        self.config = config
        self.r = client
        self.publish = publish
        self.results = ResultStore(client, config)
        self.parking = Parking(client, config)
        self.ledger = Ledger(client, config)
        self.cache = AnswerCache(client, config)
        self.breaker = Breaker(client, config)
        self.external_ids = RedisExternalIds(client, config)
        self._backends: dict[str, Backend] = {}
        self.health = HealthChecker(self.breaker, self.backend, config)

    def backend(self, host: str) -> Backend:
        b = self._backends.get(host)
        if b is None:
            b = make_backend(host, self.config.hosts[host], external_ids=self.external_ids,
                             health_timeout_s=self.config.reliability.health_timeout_s)
            self._backends[host] = b
        return b

    # -- entry point -------------------------------------------------------------------

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        job = Job.model_validate(msg["job"])
        route = Route.model_validate(msg["route"])
        trail: list[str] = list(msg.get("trail") or [])
        attempt = int(msg.get("attempt") or 1)
        stored = self.results.get(job.id)
        if stored is not None and stored.finished:
            log.info("job %s already %s; redelivery ignored", job.id, stored.status.value)
            return stored.model_dump(mode="json")
        if route.tier not in self.config.tiers or not self.config.tier_allowed(
            route.tier, job.privacy.value
        ):
            # Defence in depth: a hand-crafted message cannot push a job past privacy.
            return self._finish_failed(job, route, trail, attempt, "tier not allowed for this job")
        if self.config.tiers[route.tier].place == "rules":
            return self._run_rules(job, route, trail, attempt)
        return self._run_model(job, route, trail, attempt, msg)

    # -- rules -------------------------------------------------------------------------

    def _run_rules(self, job: Job, route: Route, trail: list[str], attempt: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        error = None
        output: Any = None
        try:
            output = rules.execute(job.kind, job.input or {}, self.config)
        except rules.RuleFailed as exc:
            error = str(exc)
        except Exception as exc:  # an executor bug must fail the job, never the worker
            log.exception("rules executor crashed on job %s", job.id)
            error = f"internal error in {job.kind.value}: {type(exc).__name__}"
        latency = time.perf_counter() - t0
        tin = tokens.count(job.text() or _json_text(job.input))
        self._bill(
            Attempt(
                job_id=job.id, attempt=attempt, workflow=job.workflow, kind=job.kind.value,
                tier=route.tier, tokens_in=tin, tokens_estimated=True, latency_s=latency,
                outcome="failed" if error else "ok", fallbacks=len(trail), error=error,
                privacy=job.privacy.value, ts=time.time(),
            )
        )
        result = Result(
            job_id=job.id, status=Status.FAILED if error else Status.SUCCEEDED, kind=job.kind.value,
            output=output, tier=route.tier, latency_s=latency, attempts=attempt,
            trail=[*trail, route.tier], error=error, tokens_in=tin, tokens_estimated=True,
        )
        return self.results.save(result).model_dump(mode="json")

    # -- model tiers -------------------------------------------------------------------

    def _hosts(self, tier: str, model: str | None, preferred: str | None) -> list[str]:
        names = [n for n, h in self.config.hosts_for(tier).items() if not model or model in h.models]
        if preferred in names:
            names.remove(preferred)
            names.insert(0, preferred)
        return names

    def _request(self, job: Job, model: str) -> CompletionRequest:
        msgs = [WireMessage(role=m.role, content=m.content, images=m.images) for m in job.chat_messages()]
        return CompletionRequest(
            model=model, messages=msgs, max_tokens=job.max_tokens, json_output=job.json_output,
            job_id=job.id,
        )

    def _run_model(self, job: Job, route: Route, trail: list[str], attempt: int,
                   msg: dict[str, Any]) -> dict[str, Any]:
        tier = route.tier
        tc = self.config.tiers[tier]
        model = route.model or tc.model_for(route.kind.value)
        if model is None:
            return self._fall_back(job, route, trail, attempt, msg, f"tier {tier} has no model")
        cached = self._from_cache(job, route, trail, attempt, model)
        if cached is not None:
            return cached
        request = self._request(job, model)
        problems: list[str] = []
        need_window = 0
        for host in self._hosts(tier, model, route.host):
            if route.tokens_in and route.tokens_in > self.config.context_window(host, model):
                problems.append(f"{host}: prompt larger than its window")
                continue
            ok, why = self.health.available(host)
            if not ok:
                problems.append(f"{host}: {why}")
                continue
            try:
                completion = self._complete(host, request)
            except ContextTooLong as exc:
                # Our count said it fits, the host says not: only a larger window helps.
                need_window = max(need_window, self.config.context_window(host, model),
                                  route.tokens_in or 1)
                problems.append(f"{host}: context too long ({exc.message})")
                continue
            except QuotaExhausted as exc:
                self.breaker.failure(host, f"quota exhausted: {exc.message}",
                                     hard_s=self.config.reliability.breaker_open_s * 20)
                problems.append(f"{host}: quota exhausted")
                continue
            except (HostDown, RateLimited) as exc:
                self.breaker.failure(host, exc.message)
                self.health.forget(host)
                problems.append(f"{host}: {type(exc).__name__}: {exc.message}")
                continue
            except BackendError as exc:  # bad request / auth / model missing: no fallback helps
                self._record(job, route, host, model, attempt, None, trail, outcome="failed",
                             error=str(exc))
                return self._finish_failed(job, route, trail, attempt, str(exc), host=host,
                                           model=model)
            self.breaker.success(host)
            return self._accept(job, route, trail, attempt, msg, host, model, completion)
        return self._fall_back(job, route, trail, attempt, msg, "; ".join(problems) or
                               f"no host of {tier} serves {model}", need_window=need_window)

    def _complete(self, host: str, request: CompletionRequest) -> Completion:
        backend = self.backend(host)
        try:
            return backend.complete(request)
        except RateLimited as exc:
            wait = exc.retry_after if exc.retry_after is not None else 1.0
            if wait > self.config.reliability.retry_after_budget_s:
                raise
            time.sleep(wait)
            return backend.complete(request)

    def _accept(self, job: Job, route: Route, trail: list[str], attempt: int, msg: dict[str, Any],
                host: str, model: str, c: Completion) -> dict[str, Any]:
        verdict = check(job, c)
        # One escalation per job: a second poor answer is still the best we have.
        higher = (None if verdict.ok or msg.get("escalated")
                  else self._escalation_tier(job, route.tier, trail, route.kind.value))
        outcome = "escalated" if higher else "ok"
        att = self._record(job, route, host, model, attempt, c, trail, outcome=outcome,
                           error=None if verdict.ok else verdict.reason)
        if higher is not None:
            self._reroute(job, route, trail, attempt, {**msg, "escalated": True}, higher,
                          f"escalated: {verdict.reason}")
        result = Result(
            job_id=job.id, status=Status.SUCCEEDED, kind=route.kind.value, output=c.text,
            text=c.text, tier=route.tier, host=host, model=model, tokens_in=att.tokens_in,
            tokens_out=att.tokens_out, tokens_estimated=att.tokens_estimated,
            cost_usd=self._total_cost(job.id), latency_s=c.latency_s, attempts=attempt,
            trail=[*trail, route.tier], simulated=c.simulated,
        )
        stored = self.results.save(result)
        if stored is result and verdict.ok and job.cache and self.config.cache.enabled:
            self.cache.put(job, model, {"text": c.text, "host": host, "tier": route.tier,
                                        "simulated": c.simulated})
        return stored.model_dump(mode="json")

    def _from_cache(self, job: Job, route: Route, trail: list[str], attempt: int,
                    model: str) -> dict[str, Any] | None:
        if not (job.cache and self.config.cache.enabled):
            return None
        hit = self.cache.get(job, model)
        if hit is None:
            return None
        answer = hit.answer if hasattr(hit, "answer") else hit
        text = answer.get("text", "")
        self._bill(Attempt(
            job_id=job.id, attempt=attempt, workflow=job.workflow, kind=route.kind.value,
            tier=route.tier, host=answer.get("host"), model=model,
            tokens_in=route.tokens_in or tokens.count(job.text()),
            tokens_out=tokens.count(text), tokens_estimated=True, outcome="cached",
            cache_hit=True, fallbacks=len(trail), privacy=job.privacy.value, ts=time.time(),
        ))
        result = Result(
            job_id=job.id, status=Status.SUCCEEDED, kind=route.kind.value, output=text, text=text,
            tier=route.tier, host=answer.get("host"), model=model, attempts=attempt,
            trail=[*trail, route.tier], cache_hit=True, simulated=bool(answer.get("simulated")),
        )
        return self.results.save(result).model_dump(mode="json")

    # -- moving on ---------------------------------------------------------------------

    def _allowed_next(self, job: Job, candidates: list[str], trail: list[str], here: str,
                      kind: str) -> list[str]:
        seen = {*trail, here}
        return [
            t for t in candidates
            if t not in seen
            and t in self.config.tiers
            and self.config.tiers[t].place != "rules"
            and self.config.tier_allowed(t, job.privacy.value)
            and self._serves(t, kind)
        ]

    def _serves(self, tier: str, kind: str) -> bool:
        """A vision job only goes where the tier's vision model can read images."""
        if kind != "vision":
            return True
        model = self.config.tiers[tier].model_for(kind)
        return bool(model and self.config.models.get(model) and self.config.models[model].vision)

    def _escalation_tier(self, job: Job, tier: str, trail: list[str], kind: str) -> str | None:
        order = [t for t, tc in self.config.tiers.items() if tc.place != "rules"]
        above = order[order.index(tier) + 1:] if tier in order else []
        nxt = self._allowed_next(job, above, trail, tier, kind)
        return nxt[0] if nxt else None

    def _fall_back(self, job: Job, route: Route, trail: list[str], attempt: int,
                   msg: dict[str, Any], why: str, need_window: int = 0) -> dict[str, Any]:
        chain = route.fallbacks or self.config.tiers[route.tier].fallback
        options = self._allowed_next(job, chain, trail, route.tier, route.kind.value)
        if need_window:
            options = [t for t in options if self._max_window(t) > need_window]
        # No host answered this attempt: the record names none (``why`` says who failed how).
        self._record(job, route, None, route.model, attempt, None, trail,
                     outcome="fallback", error=why)
        if options:
            self._reroute(job, route, trail, attempt, msg, options[0], why)
        return self._park(job, route, trail, attempt, msg, why)

    def _max_window(self, tier: str) -> int:
        return max((self.config.context_window(h, None) for h in self.config.hosts_for(tier)),
                   default=0)

    def _reroute(self, job: Job, route: Route, trail: list[str], attempt: int,
                 msg: dict[str, Any], tier: str, why: str) -> None:
        tc = self.config.tiers[tier]
        model = job.model if job.model and any(
            job.model in h.models for h in self.config.hosts_for(tier).values()
        ) else tc.model_for(route.kind.value)
        new_trail = [*trail, route.tier]
        rest = [t for t in (route.fallbacks or []) if t not in {*new_trail, tier}]
        new_route = route.model_copy(update={
            "tier": tier, "model": model, "host": None,
            "fallbacks": rest or [t for t in tc.fallback if t not in new_trail],
            "reasons": [*route.reasons, Reason(stage="worker", text=f"{route.tier} -> {tier}: {why}")],
        })
        self.publish(message(job, new_route, new_trail, attempt + 1, int(msg.get("parks") or 0),
                             bool(msg.get("escalated"))), tier)
        log.warning("job %s moved %s -> %s: %s", job.id, route.tier, tier, why)
        raise Rerouted(tier, why)

    def _park(self, job: Job, route: Route, trail: list[str], attempt: int,
              msg: dict[str, Any], why: str) -> dict[str, Any]:
        parks = int(msg.get("parks") or 0)
        first = (trail or [route.tier])[0]
        if parks >= self.config.reliability.max_attempts:
            self.parking.bury(job.id, msg, f"gave up after {parks} parks: {why}")
            result = Result(job_id=job.id, status=Status.DEAD, kind=route.kind.value,
                            attempts=attempt, trail=[*trail, route.tier], error=why)
            return self.results.save(result).model_dump(mode="json")
        # Re-enter at the job's first tier, so the whole privacy-filtered chain is tried again.
        restart = route.model_copy(update={"tier": first, "host": None})
        if first != route.tier:
            restart.model = self.config.tiers[first].model_for(route.kind.value)
        due = self.parking.park(job.id, message(job, restart, [], attempt + 1, parks), parks, why)
        result = Result(job_id=job.id, status=Status.PARKED, kind=route.kind.value,
                        attempts=attempt, trail=[*trail, route.tier],
                        error=f"parked until {time.strftime('%H:%M:%S', time.localtime(due))}: {why}")
        self.results.save(result)
        return result.model_dump(mode="json")

    def crashed(self, msg: dict[str, Any], exc: Exception) -> None:
        """A bug, not a fault: store a failed result so the job never vanishes silently."""
        try:
            job = Job.model_validate(msg["job"])
            route = Route.model_validate(msg["route"])
        except Exception:
            return
        self._finish_failed(job, route, list(msg.get("trail") or []), int(msg.get("attempt") or 1),
                            f"internal error: {type(exc).__name__}: {str(exc)[:300]}")

    # -- bookkeeping -------------------------------------------------------------------

    def _record(self, job: Job, route: Route, host: str | None, model: str | None, attempt: int,
                c: Completion | None, trail: list[str], *, outcome: str,
                error: str | None) -> Attempt:
        tier = route.tier
        estimated = c is None or c.tokens_in is None or c.tokens_out is None
        tin = c.tokens_in if c is not None and c.tokens_in is not None else tokens.count(job.text())
        tout = (c.tokens_out if c is not None and c.tokens_out is not None
                else tokens.count(c.text) if c is not None else 0)
        seconds = (c.billed_seconds if c is not None and c.billed_seconds is not None
                   else c.latency_s if c is not None else 0.0)
        tin = tin if c is not None else 0
        cost = pricing.attempt_cost(self.config, tier=tier, host=host, model=model,
                                    tokens_in=tin, tokens_out=tout, seconds=seconds)
        att = Attempt(
            job_id=job.id, attempt=attempt, workflow=job.workflow, kind=route.kind.value,
            tier=tier, host=host, model=model, tokens_in=tin, tokens_out=tout,
            tokens_estimated=estimated and c is not None,
            latency_s=c.latency_s if c else 0.0, cost_usd=cost,
            outcome=outcome,  # type: ignore[arg-type]
            fallbacks=len(trail), error=error, privacy=job.privacy.value,
            simulated=bool(c and c.simulated), ts=time.time(),
        )
        self._bill(att)
        return att

    def _bill(self, att: Attempt) -> bool:
        """Ledger and metrics in one transaction, only for a new record: a redelivery
        is billed and counted once."""
        return self.ledger.record(att, also=lambda pipe, a: metrics.add_attempt(pipe, self.config, a))

    def _total_cost(self, job_id: str) -> float:
        return round(sum(a.cost_usd for a in self.ledger.job_attempts(job_id)), 8)

    def _finish_failed(self, job: Job, route: Route, trail: list[str], attempt: int, error: str,
                       host: str | None = None, model: str | None = None) -> dict[str, Any]:
        result = Result(job_id=job.id, status=Status.FAILED, kind=route.kind.value,
                        tier=route.tier, host=host, model=model, attempts=attempt,
                        trail=[*trail, route.tier], error=error)
        return self.results.save(result).model_dump(mode="json")


def _json_text(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, default=str)[:200_000]
