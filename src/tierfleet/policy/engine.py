"""The policy: read the job's text once, run the stages, assemble the Route."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .. import tokens
from ..config import FleetConfig
from ..errors import NoRoute, TierfleetError
from ..fleet import FleetView
from ..jobs import RULES_KINDS, Job, Kind, Reason, Route
from .keywords import KindGuess
from .models import Models, Reader, Signals, load_models
from .stages import DEFAULT_STAGES, Draft, Stage
from .state import FleetState


class Policy:
    """``route(job, state)`` is pure: no Redis, no Celery, no clock; the same input, the same route."""

    def __init__(
        self,
        config: FleetConfig,
        stages: Sequence[Stage] | None = None,
        models: Models | None = None,
    ) -> None:
        self.config = config
        self.fleet = FleetView(config)
        self.stages: tuple[Stage, ...] = tuple(stages) if stages is not None else DEFAULT_STAGES
        self._models = models
        self._reader: Reader | None = None
        # Every token count a stage compares with: the policy's thresholds and each
        # host's context window for each model (less the job's max_tokens, per job).
        windows = {h.window for t, tc in config.tiers.items()
                   for m in {None, *tc.models.values()} for h in self.fleet.hosts(t, m)}
        self._windows = tuple(sorted(windows))
        self._thresholds = (config.policy.short_chat_tokens, config.policy.large_job_tokens)

    @property
    def reader(self) -> Reader:
        # Lazy: building a Policy must not load models a caller may never use.
        if self._reader is None:
            models = self._models if self._models is not None else load_models()
            self._reader = Reader(self.config.policy.classifier, models)
        return self._reader

    # -- public ---------------------------------------------------------------------------

    def route(self, job: Job, state: FleetState | None = None) -> Route:
        return self._route(job, state or FleetState(), self._read(job))

    def _read(self, job: Job) -> Signals:
        # A rules job is decided by its kind alone: no model reads its payload.
        if job.is_rules:
            return _RULES_SIGNALS[job.kind]
        text = job.text()
        return self.reader.read(text, self._count(job, text))

    def _count(self, job: Job, text: str) -> int:
        """Exact where a decision needs it (near a window or threshold), else an estimate
        on the same side of every one of them (tokens.count_near)."""
        out = job.max_tokens or 0
        limits = (*self._thresholds, *(w - out for w in self._windows))
        return tokens.count_near(text, limits)[0]

    def route_many(self, jobs: Sequence[Job], state: FleetState | None = None) -> list[Route]:
        """Route a batch: one tokenizer and model pass for all texts. Raises on the first NoRoute."""
        return routes_or_raise(self.route_each(jobs, state))

    def route_each(
        self, jobs: Sequence[Job], state: FleetState | None = None
    ) -> list[Route | TierfleetError]:
        """Like route_many, but a job that cannot be routed yields its error in place."""
        st = state or FleetState()
        model_jobs = [j for j in jobs if not j.is_rules]
        texts = [j.text() for j in model_jobs]
        counts = [self._count(j, t) for j, t in zip(model_jobs, texts, strict=True)]
        read = iter(self.reader.read_many(texts, counts))
        signals = [_RULES_SIGNALS[j.kind] if j.is_rules else next(read) for j in jobs]
        out: list[Route | TierfleetError] = []
        # The batch's own jobs queue up ahead of its later ones: each routed job counts
        # into the depth the load stage sees, so a burst spills once its queue is long
        # enough, not never (the snapshot was taken before any of it was published).
        depth = dict(st.queue_depth)
        for job, sig in zip(jobs, signals, strict=True):
            now = st if depth == st.queue_depth else dataclasses.replace(st, queue_depth=dict(depth))
            try:
                route = self._route(job, now, sig)
            except TierfleetError as exc:
                out.append(exc)
                continue
            out.append(route)
            depth[route.tier] = depth.get(route.tier, 0) + 1
        return out

    # -- internals ------------------------------------------------------------------------

    def _route(self, job: Job, state: FleetState, signals: Signals) -> Route:
        tiers = list(self.fleet.tiers)
        d = Draft(
            job=job,
            config=self.config,
            fleet=self.fleet,
            state=state,
            signals=signals,
            permitted=list(tiers),
            allowed=list(tiers),
            kind=job.kind,
        )
        for stage in self.stages:
            stage.apply(d)
            if d.done:
                break
        if d.tier is None:
            raise NoRoute(f"kind: no stage chose a tier for job {job.id}")
        return self._assemble(d)

    def _assemble(self, d: Draft) -> Route:
        fleet, job, tier = self.fleet, d.job, d.tier
        assert tier is not None
        reasons = list(d.reasons)
        is_rules = fleet.place[tier] == "rules"
        model = None if is_rules else d.model_on(tier)
        host = None
        if not is_rules:
            fitting = [h for h in fleet.hosts(tier, model) if h.window >= d.need_tokens]
            up = [h for h in fitting if h.name not in d.state.open_hosts]
            if up:
                host = up[0].name
            elif fitting:
                host = fitting[0].name
                reasons.append(
                    Reason(stage="host", text=f"every host of {tier} has an open breaker; {host} named")
                )
        chain = self.config.tiers[tier].fallback
        fallbacks = [t for t in chain if t in d.permitted and t != tier]
        dropped = [t for t in chain if t not in fallbacks and t != tier]
        if dropped:
            reasons.append(
                Reason(
                    stage="fallback",
                    text=f"chain {' -> '.join(chain)} without {', '.join(dropped)} "
                    "(privacy, context window or cost ceiling)",
                )
            )
        p = d.signals.p_small_ok if not job.is_rules else 1.0
        return Route(
            tier=tier,
            kind=d.kind if d.kind is not Kind.AUTO else Kind.CHAT,
            model=model,
            host=host,
            fallbacks=fallbacks,
            p_small_ok=round(p, 4),
            tokens_in=d.signals.tokens_in,
            review=d.review,
            reasons=reasons,
        )


def build_policy(config: FleetConfig) -> Policy:
    return Policy(config)


# Rules jobs need no model: p_small_ok 1.0 says "no bigger model needed".
_RULES_SIGNALS = {
    k: Signals(0, KindGuess(k, 1.0, "given"), 1.0, "rules kind") for k in RULES_KINDS
}


def routes_or_raise(results: Sequence[Route | TierfleetError]) -> list[Route]:
    """``route_each``'s results as routes, raising the first error among them."""
    for r in results:
        if isinstance(r, TierfleetError):
            raise r
    return list(results)  # type: ignore[arg-type]
