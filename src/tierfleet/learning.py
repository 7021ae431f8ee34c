"""The learning loop's hooks into the fleet: what the runner and the dispatcher call.

The runner calls :meth:`Learner.answered` after it stores a job's answer and
:meth:`Learner.escalated` when its quality check moves a poor small answer up;
both are best-effort: a Redis error here is logged, never a failed job. The
dispatcher routes with :func:`fleet_policy`, which adds the bad-answer memory
(``learning.memory``) and the promoted policy version (``learning.versions``)
to the plain policy when the config asks for them; while a candidate is in
shadow it also asks the candidate and logs both decisions (``policy/shadowlog.py``),
acting on the current one only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis

from .backends.base import ChatMessage, Completion, CompletionRequest
from .config import FleetConfig
from .envelope import Delivery
from .errors import TierfleetError
from .jobs import Attempt, Job, Route
from .labels import (
    QUALITY_CHECK_JUDGE,
    AnswerNote,
    AnswerNotes,
    Label,
    LabelStore,
    RedisMemoryStore,
    features_of,
    is_small,
)
from .policy import BadAnswerMemory, FleetState, Policy, with_memory
from .policy.engine import routes_or_raise
from .shadow import SHADOW_OF, DeterministicJudge, Judge, RubricJudge, ShadowSampler

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("tierfleet.learning")


class Learner:
    """Labels from one worker's answers: answer notes, escalations, shadow samples and verdicts."""

    def __init__(self, runner: Runner, judge: Judge | None = None) -> None:
        self.runner = runner
        self.config: FleetConfig = runner.config
        self.redis: redis.Redis = runner.redis
        self.notes = AnswerNotes(self.redis, self.config)
        self.labels = LabelStore(self.redis, self.config)
        self.shadow = ShadowSampler(self.redis, self.config, runner.publish)
        self.judge = judge  # None: chosen per job (learning.shadow.judge)

    @property
    def on(self) -> bool:
        return self.config.learning.labels

    def _note(self, d: Delivery, model: str | None, call: str | None) -> AnswerNote:
        job, first = d.job, d.first_route
        return AnswerNote(
            job_id=job.id, attempt=d.attempt, call=call, tier=d.tier, model=model,
            kind=d.route.kind.value, true_kind=_true_kind(job), workflow=job.workflow,
            privacy=job.privacy.value, tokens_in=d.route.tokens_in, p_small_ok=first.p_small_ok,
            policy_version=first.policy_version, prompt=job.text(),
        )

    def answered(self, d: Delivery, model: str, c: Completion, call: str | None) -> None:
        """A job's answer is stored: keep who answered; judge it if it is a shadow job."""
        if not self.on:
            return
        try:
            if d.job.metadata.get(SHADOW_OF):
                self.shadow.finish(d, c.text or "", self.judge or self._judge_for(d.job))
                return
            note = self._note(d, model, call)
            self.notes.put(note)
            self.shadow.maybe_sample(d, c.text or "", note)
        except (redis.RedisError, TierfleetError, ValueError) as exc:
            log.warning("learning: job %s: %s", d.job.id, exc)

    def escalated(self, d: Delivery, model: str, reason: str, call: str | None) -> None:
        """The quality check found the small answer poor: a bad-small label, and the memory."""
        if not self.on or d.job.metadata.get(SHADOW_OF) or not is_small(self.config, d.tier):
            return
        note = self._note(d, model, call)
        label = Label(
            id=f"escalation:{d.job.id}:{d.attempt}", source="escalation", job_id=d.job.id,
            attempt=d.attempt, call=call, ts=time.time(), kind=note.kind, true_kind=note.true_kind,
            workflow=note.workflow, privacy=note.privacy, tier=d.tier, model=model,
            routed_small=True, small_score=0.0, large_score=None,
            judge=QUALITY_CHECK_JUDGE[0], judge_version=QUALITY_CHECK_JUDGE[1],
            policy_version=note.policy_version, features=features_of(note), prompt=note.prompt,
            note=reason[:200],
        )
        try:
            if self.labels.add(label):
                RedisMemoryStore(self.redis, self.config).add_bad(
                    note.prompt, d.tier, label.ts, d.job.id, "escalation")
        except redis.RedisError as exc:
            log.warning("learning: escalation label of job %s: %s", d.job.id, exc)

    def _judge_for(self, job: Job) -> Judge | None:
        mode = self.config.learning.shadow.judge
        if mode != "rubric" and DeterministicJudge.applies(job):
            return DeterministicJudge()
        if mode == "deterministic":
            return None
        return RubricJudge(self._ask_strong)

    def _ask_strong(self, prompt: str) -> str:
        """One rubric call on the strong tier's first host, billed in the ledger."""
        tier = self.config.learning.shadow.strong_tier
        fleet = self.runner.fleet
        model = fleet.model_for(tier, "chat")
        hosts = fleet.hosts(tier, model)
        if model is None or not hosts:
            return ""
        host = hosts[0].name
        c = self.runner.backend(host).complete(CompletionRequest(
            model=model, messages=[ChatMessage(role="user", content=prompt)], max_tokens=200))
        self.runner.ledger.record(Attempt(
            job_id=f"judge.{int(time.time() * 1e6)}", attempt=1, workflow="tierfleet-judge",
            kind="chat", tier=tier, host=host, model=model, tokens_in=c.tokens_in or 0,
            tokens_out=c.tokens_out or 0, latency_s=c.latency_s, ts=time.time()))
        return c.text or ""


def _true_kind(job: Job) -> str | None:
    """The producer's kind when it typed the job (the classifier's target), else a hint."""
    if job.kind.value != "auto":
        return job.kind.value
    return job.metadata.get("label_kind") or None


# -- the dispatcher's policy --------------------------------------------------------------


class MemoryRefresh:
    """The dispatcher's copy of the bad-answer memory, reloaded from Redis every few seconds."""

    def __init__(self, client: redis.Redis, config: FleetConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.memory = BadAnswerMemory()
        self.store = RedisMemoryStore(client, config)
        self.every = config.learning.memory_reload_s
        self.clock = clock
        self._at = -1e18

    def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._at >= self.every:
            self._at = now
            try:
                self.memory.load(self.store, now)
            except redis.RedisError as exc:
                log.warning("learning: memory not reloaded: %s", exc)


class FleetPolicy:
    """The policy the dispatcher routes with: versions and memory around plain ``Policy`` s.

    Duck-types :class:`~tierfleet.policy.Policy` (route, route_many, route_each,
    reader); every route names the version that made it. With a candidate in shadow,
    every routed job is also routed by the candidate and the pair logged: that second
    route never replaces the first, and its failures (a broken candidate, Redis) are
    logged and dropped, never raised into the dispatch path.
    """

    SHADOW_WARN_EVERY_S = 60.0  # a broken candidate fails on every job: one warning a minute

    def __init__(self, config: FleetConfig, client: redis.Redis | None) -> None:
        from .policy.shadowlog import ShadowLog
        from .policy.versions import PolicyPicker

        self.config = config
        self.memory = (MemoryRefresh(client, config)
                       if config.learning.memory and client is not None else None)
        stages = with_memory(self.memory.memory) if self.memory is not None else None
        self.picker = PolicyPicker(config, client, stages)
        self.shadow_log = ShadowLog(client, config) if client is not None else None
        self._warned_at = -1e18

    @property
    def reader(self) -> Any:
        return self.picker.current_policy().reader

    @property
    def stages(self) -> Any:
        return self.picker.current_policy().stages

    def _before(self) -> None:
        if self.memory is not None:
            self.memory.refresh()
        self.picker.refresh()

    def route(self, job: Job, state: FleetState | None = None) -> Route:
        self._before()
        version, policy = self.picker.pick(job.id)
        route = _named(policy.route(job, state), version)
        self._shadow([job], [route], state)
        return route

    def route_each(self, jobs: Sequence[Job], state: FleetState | None = None) -> list[Any]:
        self._before()
        groups: dict[str, list[int]] = {}
        policies: dict[str, Policy] = {}
        for i, j in enumerate(jobs):
            v, p = self.picker.pick(j.id)
            groups.setdefault(v, []).append(i)
            policies[v] = p
        out: list[Any] = [None] * len(jobs)
        for v, idx in groups.items():
            for i, r in zip(idx, policies[v].route_each([jobs[i] for i in idx], state), strict=True):
                out[i] = _named(r, v) if isinstance(r, Route) else r
        self._shadow(jobs, out, state)
        return out

    def _shadow(self, jobs: Sequence[Job], routes: Sequence[Any], state: FleetState | None) -> None:
        """Log the shadow candidate's decisions beside the routes taken; never raises."""
        cand = self.picker.shadow_candidate()
        if cand is None or self.shadow_log is None:
            return
        from .policy.shadowlog import entry_of

        try:
            pairs = [(j, r) for j, r in zip(jobs, routes, strict=True) if isinstance(r, Route)]
            if not pairs:
                return
            # The candidate's own copy of the batch: route_each copies the state it is given.
            theirs = self.picker.policy(cand).route_each([j for j, _ in pairs], state)
            entries = [entry_of(self.config, j, r, _named(c, cand))
                       for (j, r), c in zip(pairs, theirs, strict=True) if isinstance(c, Route)]
            self.shadow_log.add(entries)
        except Exception as exc:  # the candidate is on trial: whatever it does, routing goes on
            now = time.time()
            if now - self._warned_at >= self.SHADOW_WARN_EVERY_S:
                self._warned_at = now
                log.warning("learning: shadow candidate %s not logged: %s: %s", cand,
                            type(exc).__name__, str(exc)[:200])

    def route_many(self, jobs: Sequence[Job], state: FleetState | None = None) -> list[Route]:
        return routes_or_raise(self.route_each(jobs, state))


def _named(route: Route, version: str) -> Route:
    return route.model_copy(update={"policy_version": version})


def fleet_policy(config: FleetConfig, client: redis.Redis | None = None) -> FleetPolicy:
    return FleetPolicy(config, client)
