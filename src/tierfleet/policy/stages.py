"""The routing stages: small units, run in order over one draft route.

Each stage may decide a tier, narrow the tiers still allowed, or pass, and says
what it did in words. Three sets of tiers travel through the stages:

- ``permitted``: where the job may ever run (privacy, context window, cost
  ceiling). Fallbacks come from here, so a confidential job never falls to a
  rented or paid tier.
- ``allowed``: candidates for the first attempt (``permitted`` further narrowed
  by an explicit tier or model).
- ``tier``: the current choice; ``pinned`` when the job named it (an explicit
  override moves for nothing but an error), ``settled`` when risk or a premium
  user chose it (the kind stage leaves it alone; size, load and cost may not).

Overrides that privacy forbids raise ``NoRoute``: silently sending a job
somewhere other than where its producer asked hides a mistake in the producer.
Every ``NoRoute`` message starts with the job field at fault ("tier: ...",
"model: ...", "prompt: ...", "max_cost_usd: ..."), which the HTTP API reports
as the parameter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..config import FleetConfig
from ..errors import NoRoute
from ..fleet import DEFAULT_OUT_TOKENS, FleetView
from ..jobs import RULES_KINDS, Job, Kind, Privacy, Reason, Risk, UserTier
from .memory import BadAnswerMemory
from .models import Signals, prior_small_ok
from .state import FleetState, scope_matches

# Below this classifier confidence a job's own text is a weak signal: the
# session's recent kind wins.
WEAK_SIGNAL = 0.5
# Kinds whose default home is the small local model.
SMALL_KINDS = frozenset(
    {Kind.CLASSIFICATION, Kind.EXTRACTION, Kind.SUMMARY, Kind.TRANSLATION, Kind.CHAT}
)
# Mechanical work the producer named itself: the small model's home ground, since a
# producer who typed the job knows it better than a prompt classifier does. A low
# p_small_ok is noted, not acted on; a poor answer is escalated by the worker's quality
# check instead. Untyped (auto) jobs and chat still move on it.
PRODUCER_TYPED_SMALL = frozenset(
    {Kind.CLASSIFICATION, Kind.EXTRACTION, Kind.SUMMARY, Kind.TRANSLATION}
)
# Kinds sent to the bigger box by default that an easy prompt may keep small.
DOWNGRADABLE_KINDS = frozenset({Kind.CODE, Kind.REASONING})


@dataclass
class Draft:
    """The routing decision while the stages build it: where the job may go and why.

    ``Policy.route`` makes one per job and hands it to each stage in turn; a stage
    narrows ``allowed``, forbids tiers or decides ``tier``, and every change appends a
    reason, so the finished ``Route`` explains itself. Pure: it holds the config's
    :class:`FleetView` and the dispatcher's :class:`FleetState` snapshot, never Redis.
    """

    job: Job
    config: FleetConfig
    fleet: FleetView
    state: FleetState
    signals: Signals
    permitted: list[str]
    allowed: list[str]
    kind: Kind
    confidence: float = 1.0
    tier: str | None = None
    pinned: bool = False
    settled: bool = False
    session_tier: str | None = None
    from_session: bool = False  # the kind or tier came from the session, not from the text
    review: bool = False
    done: bool = False
    reasons: list[Reason] = field(default_factory=list)

    # -- what a stage may do -------------------------------------------------------

    def note(self, stage: str, text: str) -> None:
        self.reasons.append(Reason(stage=stage, text=text))

    def decide(self, stage: str, tier: str, text: str) -> None:
        self.tier = tier
        self.note(stage, text)

    def narrow(self, stage: str, tiers: list[str], text: str) -> None:
        self.allowed = [t for t in self.allowed if t in tiers]
        self.note(stage, text)

    def forbid(self, tiers: set[str]) -> None:
        self.permitted = [t for t in self.permitted if t not in tiers]
        self.allowed = [t for t in self.allowed if t not in tiers]

    # -- shared questions ------------------------------------------------------------

    def model_on(self, tier: str) -> str | None:
        """The model a tier would run this job with: the job's own where the tier serves it."""
        m = self.job.model
        if m and self.fleet.serves(tier, m):
            return m
        return self.fleet.model_for(tier, self.kind.value)

    @property
    def need_tokens(self) -> int:
        return self.signals.tokens_in + (self.job.max_tokens or 0)

    @property
    def out_tokens(self) -> int:
        return self.job.max_tokens or DEFAULT_OUT_TOKENS

    def cost_on(self, tier: str) -> float:
        return self.fleet.cost(tier, self.model_on(tier), self.signals.tokens_in, self.out_tokens)

    def candidates(self) -> list[str]:
        """Allowed model tiers, weakest to strongest."""
        return [t for t in self.fleet.ladder if t in self.allowed]

    def stronger(self, tier: str) -> list[str]:
        r = self.fleet.rank.get(tier, -1)
        return [t for t in self.candidates() if self.fleet.rank[t] > r]

    def strongest_local(self) -> str | None:
        local = [t for t in self.candidates() if self.fleet.place[t] == "local"]
        return local[-1] if local else None


class Stage(Protocol):
    name: str

    def apply(self, d: Draft) -> None: ...


def _tiers(ts: list[str]) -> str:
    return ", ".join(ts) if ts else "none"


# -- 1. constraints ------------------------------------------------------------------


def _can_call_tools(d: Draft, tier: str, kind: str) -> bool:
    """Whether the model ``tier`` would run for ``kind`` can call tools (config ``tools``)."""
    model = d.job.model if d.job.model and d.fleet.serves(tier, d.job.model) \
        else d.fleet.model_for(tier, kind)
    mc = d.config.models.get(model) if model else None
    return mc.tools if mc is not None else True


class Constraints:
    """Privacy, tools, explicit tier or model, premium users."""

    name = "constraints"

    def apply(self, d: Draft) -> None:
        job, fleet = d.job, d.fleet
        if job.privacy is Privacy.CONFIDENTIAL:
            away = set(d.permitted) - set(fleet.local)
            d.forbid(away)
            d.note(
                self.name,
                f"privacy=confidential: local tiers only ({_tiers(d.permitted)}), for the "
                f"first attempt and every fallback; never {_tiers(sorted(away))}",
            )
        if job.tools and job.tool_choice != "none":
            # A job that may call functions needs a model that can: never the others,
            # neither first nor as a fallback.
            kind = job.kind.value if job.kind.value != "auto" else "chat"
            cannot = {t for t in d.permitted
                      if fleet.place.get(t) != "rules" and not _can_call_tools(d, t, kind)}
            if cannot:
                d.forbid(cannot)
                d.note(self.name, f"tools: {_tiers(sorted(cannot))} cannot call tools; "
                       f"only {_tiers(d.permitted)}")
        if job.tier is not None:
            self._tier_override(d, job.tier)
        if job.model is not None:
            self._model_override(d, job.model)
        premium = d.config.policy.premium_tier
        if (
            job.user_tier is UserTier.PREMIUM
            and premium
            and not d.pinned
            and not job.is_rules
            and job.model is None
        ):
            if premium in d.allowed:
                d.decide(self.name, premium, f"user_tier=premium -> {premium}")
                d.settled = True
            else:
                d.note(
                    self.name,
                    f"user_tier=premium would use {premium}, which "
                    f"privacy={job.privacy.value} or the config does not allow",
                )

    def _tier_override(self, d: Draft, tier: str) -> None:
        fleet, job = d.fleet, d.job
        if tier not in fleet.place:
            raise NoRoute(f"tier: {tier!r} is not a configured tier ({_tiers(fleet.tiers)})")
        if tier not in d.permitted:
            raise NoRoute(
                f"tier: the job asks for {tier!r} but privacy={job.privacy.value} allows only "
                f"{_tiers(d.permitted)}; drop the override or change the privacy tag"
            )
        if job.is_rules and fleet.place[tier] != "rules":
            raise NoRoute(f"tier: a {job.kind.value} job runs on the rules tier, not on {tier!r}")
        if not job.is_rules and fleet.place[tier] == "rules":
            raise NoRoute(f"tier: the rules tier runs no model; a {job.kind.value} job needs one")
        d.narrow(self.name, [tier], f"explicit tier {tier} (job override, within privacy)")
        d.tier = tier
        d.pinned = True

    def _model_override(self, d: Draft, model: str) -> None:
        fleet, job = d.fleet, d.job
        if job.is_rules:
            raise NoRoute(f"model: a {job.kind.value} job runs on the rules tier with no model")
        serving = fleet.tiers_serving(model)
        if not serving:
            raise NoRoute(f"model: no configured host serves {model!r}")
        ok = [t for t in serving if t in d.allowed]
        if not ok:
            if d.pinned:
                raise NoRoute(f"model: tier {d.tier!r} has no host serving {model!r}")
            raise NoRoute(
                f"model: {model!r} is served only by {_tiers(serving)}, which "
                f"privacy={job.privacy.value} does not allow"
            )
        d.narrow(self.name, ok, f"explicit model {model} (served by {_tiers(ok)})")
        if len(ok) == 1:
            d.tier = ok[0]
            d.pinned = True


# -- 2. rules ------------------------------------------------------------------------


class Rules:
    name = "rules"

    def apply(self, d: Draft) -> None:
        if not d.job.is_rules:
            return
        tier = d.fleet.rules_tier
        if tier is None:
            raise NoRoute(f"kind: {d.job.kind.value} is a rules kind but no tier has place=rules")
        d.decide(self.name, tier, f"{d.job.kind.value} is a rules kind: no model, no cost")
        d.done = True


# -- 3. kind classification and session context ------------------------------------------


class Classify:
    """Resolves ``auto``: images mean vision, otherwise the classifier decides."""

    name = "classify"

    def apply(self, d: Draft) -> None:
        job = d.job
        if job.kind is not Kind.AUTO:
            d.kind, d.confidence = job.kind, 1.0
            return
        if job.has_images():
            d.kind, d.confidence = Kind.VISION, 1.0
            d.note(self.name, "auto -> vision: the job carries images")
            return
        g = d.signals.guess
        d.kind, d.confidence = g.kind, g.confidence
        d.note(self.name, f"auto -> {g.describe()}")


class Session:
    """A weak signal keeps the session's recent kind (or tier).

    The job's own signal is weak when the classifier is unsure, or when it falls
    back on chat for a prompt with no cue of any kind ("now make it faster"): a
    follow-up in a coding session is still about the code.
    """

    name = "session"

    def apply(self, d: Draft) -> None:
        job = d.job
        if job.kind is not Kind.AUTO or job.has_images() or not job.session:
            return
        unsure = d.confidence < WEAK_SIGNAL
        bare = d.kind is Kind.CHAT and d.signals.cues == 0
        if not (unsure or bare):
            return
        memory = d.config.policy.session_memory
        recent = d.state.session_tiers.get(job.session, [])[-memory:] if memory else []
        if len(recent) < 2:
            return
        top, n = Counter(recent).most_common(1)[0]
        if n * 2 <= len(recent):
            return
        why = (
            f"classifier unsure ({d.kind.value}, {d.confidence:.2f} < {WEAK_SIGNAL})"
            if unsure
            else f"no cue in the prompt ({d.kind.value} by default)"
        )
        seen = f"{n} of session {job.session}'s last {len(recent)} jobs"
        if top in _MODEL_KIND_VALUES:
            d.from_session = True
            if Kind(top) is not d.kind:
                d.kind = Kind(top)
            d.note(self.name, f"{why}; {seen} were {top} -> keep {top}")
        elif top in d.fleet.rank and top in d.allowed:
            d.from_session = True
            d.session_tier = top
            d.note(self.name, f"{why}; {seen} ran on {top} -> keep {top}")


_MODEL_KIND_VALUES = frozenset(k.value for k in Kind if k not in (Kind.AUTO, Kind.VISION)) - {
    k.value for k in RULES_KINDS
}


# -- 4. risk -------------------------------------------------------------------------------


class RiskStage:
    name = "risk"

    def apply(self, d: Draft) -> None:
        if d.job.risk is not Risk.HIGH or d.pinned:
            return
        want = d.config.policy.high_risk_tier
        if want in d.allowed:
            d.decide(self.name, want, f"risk=high -> {want}")
            d.settled = True
            return
        best = d.strongest_local()
        if best is None:
            raise NoRoute(f"risk: a high-risk job wants {want} or a local model tier; neither is allowed")
        d.decide(
            self.name,
            best,
            f"risk=high wants {want}, which privacy={d.job.privacy.value} forbids: best "
            f"allowed local tier {best}, marked for review",
        )
        d.review = True
        d.settled = True


# -- 5. kind -> tier, refined by p_small_ok ---------------------------------------------------


class KindStage:
    """Kind -> tier (``policy.kind_tiers``), then the prompt's difficulty.

    For the kinds at home on the small model, a prompt it would likely fail
    (p_small_ok under ``policy.p_small_ok_threshold``), or a long chat, goes one
    step up: the first allowed tier of ``policy.spill_order`` (the GPU box; a
    rented or paid tier when privacy allows and nothing nearer is). For code and
    reasoning, a clearly easy prompt (p_small_ok past halfway from the threshold
    to 1: 0.875 by default) stays on the small model. Privacy, size, load and
    cost still have their say in the stages after this one.
    """

    name = "kind"

    def apply(self, d: Draft) -> None:
        if d.tier is not None and (d.pinned or d.settled):
            return
        fleet, kind = d.fleet, d.kind
        if kind is Kind.VISION:
            vision = [t for t in d.allowed if fleet.is_vision(t)]
            if vision and vision != d.allowed:
                d.narrow(self.name, vision, f"vision: tiers with a vision model ({_tiers(vision)})")
        tiers = d.config.policy.kind_tiers
        if d.session_tier and d.session_tier in d.allowed:
            tier, why = d.session_tier, f"session keeps {d.session_tier}"
        elif d.tier in d.allowed:
            tier, why = d.tier, f"{kind.value} -> {d.tier}"
        elif kind.value in tiers:
            tier, why = tiers[kind.value], f"{kind.value} -> {tiers[kind.value]} (policy.kind_tiers)"
        else:
            tier = fleet.small_tier or ""
            why = f"{kind.value} has no policy.kind_tiers entry -> {tier}"
        if tier not in d.allowed:
            cands = d.candidates()
            if not cands:
                raise NoRoute(f"kind: no allowed model tier for a {kind.value} job")
            # The allowed tier nearest in strength; on a tie, the stronger one.
            r = fleet.rank.get(tier, 0)
            repl = min(cands, key=lambda t: (abs(fleet.rank[t] - r), -fleet.rank[t]))
            why += f", not allowed for this job -> {repl}"
            tier = repl
        d.decide(self.name, tier, why)
        if d.from_session:
            # A bare follow-up says little about difficulty: keep the session's place.
            return
        self._difficulty(d)

    def _difficulty(self, d: Draft) -> None:
        fleet, kind, tier = d.fleet, d.kind, d.tier
        sig = d.signals
        if sig.p_method == "learned" and sig.p_kinds is not None and kind.value not in sig.p_kinds:
            # The model saw no prompt of this kind: its estimate is an extrapolation (and
            # sits near the training mean, i.e. near the threshold). The length prior says
            # as much as can be said; labels of the kind (`tierfleet train --labels`) fix it.
            d.signals = sig = replace(sig, p_small_ok=prior_small_ok(sig.tokens_in),
                                      p_method=f"length prior: no {kind.value} labels")
        p = sig.p_small_ok
        # Say so when no trained model stands behind the estimate.
        est = f"p_small_ok {p:.2f}" + ("" if d.signals.p_method == "learned" else f" ({d.signals.p_method})")
        thr = d.config.policy.p_small_ok_threshold
        keep_bar = thr + (1.0 - thr) / 2.0
        small = fleet.small_tier
        assert tier is not None
        if tier == small and kind in SMALL_KINDS:
            up = [t for t in d.stronger(tier) if fleet.place[t] != "rules"]
            bigger = next((t for t in fleet.spill if t in up), up[0] if up else None)
            long_chat = kind is Kind.CHAT and d.signals.tokens_in > d.config.policy.short_chat_tokens
            if long_chat and bigger:
                d.decide(
                    self.name,
                    bigger,
                    f"long chat ({d.signals.tokens_in} tokens > policy.short_chat_tokens "
                    f"{d.config.policy.short_chat_tokens}) -> {bigger}",
                )
            elif p < thr and d.job.kind is not Kind.AUTO and kind in PRODUCER_TYPED_SMALL:
                d.note(self.name, f"{est} < {thr:.2f}, but the producer typed this job "
                       f"{kind.value}: it stays on {tier} (a poor answer is escalated)")
            elif p < thr and bigger:
                d.decide(
                    self.name,
                    bigger,
                    f"{est} < {thr:.2f}: the small model is likely not enough "
                    f"-> {bigger}",
                )
            elif p < thr:
                d.note(self.name, f"{est} < {thr:.2f} but no bigger tier is allowed")
            else:
                d.note(self.name, f"{est} >= {thr:.2f}: the small model will do")
        elif (
            kind in DOWNGRADABLE_KINDS
            and small in d.allowed
            and fleet.rank.get(tier, -1) > fleet.rank.get(small or "", -1)
            and p >= keep_bar
        ):
            d.decide(
                self.name,
                small or tier,
                f"{est} >= {keep_bar:.2f}: an easy {kind.value} prompt, "
                f"the small model on {small} will do",
            )


# -- 6. size --------------------------------------------------------------------------------


class Size:
    name = "size"

    def apply(self, d: Draft) -> None:
        fleet, need = d.fleet, d.need_tokens
        too_small = [t for t in d.permitted if not fleet.fits(t, d.model_on(t), need)]
        if too_small:
            # A window of 0 means no host of that tier serves the model at all.
            unserved = [t for t in too_small if fleet.window(t, d.model_on(t)) == 0]
            short = [t for t in too_small if t not in unserved]
            d.forbid(set(too_small))
            if short:
                windows = ", ".join(f"{t} {fleet.window(t, d.model_on(t)):,}" for t in short)
                d.note(self.name, f"{need:,} tokens exceed the context window of {windows}")
            if unserved:
                d.note(self.name, f"no host of {_tiers(unserved)} serves {d.model_on(unserved[0])}")
        big = d.config.policy.large_job_tokens
        if d.signals.tokens_in > big and not d.pinned:
            target = d.config.policy.large_job_tier
            if target in d.allowed and d.tier != target:
                d.decide(
                    self.name,
                    target,
                    f"large job ({d.signals.tokens_in:,} > policy.large_job_tokens {big:,}) -> {target}",
                )
            elif target not in d.allowed:
                d.note(self.name, f"large job, but {target} is not allowed here")
        if d.tier is not None and d.tier not in d.allowed:
            if d.pinned:
                raise NoRoute(
                    f"prompt: {need:,} tokens do not fit any host of the requested tier "
                    f"{d.tier!r} (largest window {fleet.window(d.tier, d.model_on(d.tier)):,})"
                )
            cands = d.candidates()
            if not cands:
                raise NoRoute(f"prompt: {need:,} tokens fit no allowed tier's context window")
            up = d.stronger(d.tier)
            new = up[0] if up else cands[-1]
            d.decide(self.name, new, f"{d.tier} cannot take {need:,} tokens -> {new}")


# -- 7. load ---------------------------------------------------------------------------------


class Load:
    """Spill when the queue wait would blow the latency budget or every host is down."""

    name = "load"

    def apply(self, d: Draft) -> None:
        if d.tier is None or d.pinned or d.fleet.place[d.tier] == "rules":
            return
        tier, state, budget = d.tier, d.state, d.job.latency_budget_s
        if budget is None:
            budget = d.config.policy.latency_budgets_s.get(d.kind.value)
        if self._all_open(d, tier):
            chain = [t for t in d.config.tiers[tier].fallback if t in d.allowed]
            nxt = next((t for t in chain if not self._all_open(d, t)), None)
            if nxt:
                d.decide(self.name, nxt, f"every host of {tier} has an open breaker -> {nxt}")
                tier = nxt
            else:
                d.note(self.name, f"every host of {tier} has an open breaker and no fallback is up")
        if budget is None:
            return
        wait = state.wait_s(tier)
        if wait <= budget:
            return
        spill = d.fleet.spill
        after = spill[spill.index(tier) + 1 :] if tier in spill else list(spill)
        path = [t for t in after if t in d.allowed and not self._all_open(d, t)]
        hops = [f"{tier} wait {wait:.1f} s > budget {budget:g} s"]
        for t in path:
            w = state.wait_s(t)
            if w <= budget:
                d.decide(self.name, t, "; ".join(hops) + f" -> {t} (wait {w:.1f} s)")
                return
            hops.append(f"{t} wait {w:.1f} s")
        if path:
            best = min([tier, *path], key=state.wait_s)
            if best != tier:
                d.decide(
                    self.name, best, "; ".join(hops) + f": none within budget -> {best}, the shortest wait"
                )
                return
        d.note(self.name, "; ".join(hops) + ": no allowed tier to spill to")

    @staticmethod
    def _all_open(d: Draft, tier: str) -> bool:
        hosts = d.fleet.hosts(tier, d.model_on(tier))
        return bool(hosts) and all(h.name in d.state.open_hosts for h in hosts)


# -- 8. cost -----------------------------------------------------------------------------------


class Cost:
    name = "cost"

    def apply(self, d: Draft) -> None:
        ceiling = d.job.max_cost_usd
        if ceiling is None or d.tier is None:
            return
        dear = {t for t in d.permitted if d.cost_on(t) > ceiling}
        here = d.cost_on(d.tier)
        d.forbid(dear - {d.tier})
        if here <= ceiling:
            if dear:
                d.note(
                    self.name,
                    f"max_cost_usd {ceiling:g}: {d.tier} ~${here:.4f} fits; "
                    f"{_tiers(sorted(dear))} would not",
                )
            return
        if d.pinned:
            raise NoRoute(
                f"max_cost_usd: the job pins {d.tier} (~${here:.4f}) but allows only ${ceiling:g}"
            )
        d.forbid({d.tier})
        below = [t for t in d.candidates() if d.fleet.rank[t] < d.fleet.rank.get(d.tier, 99)]
        pool = below or d.candidates()
        if not pool:
            raise NoRoute(f"max_cost_usd: no allowed tier costs under ${ceiling:g} for this job")
        new = pool[-1]
        text = (
            f"max_cost_usd {ceiling:g}: {d.tier} ~${here:.4f} is not worth it -> {new} "
            f"(~${d.cost_on(new):.4f})"
        )
        if d.job.risk is Risk.HIGH:
            d.review = True
            text += "; a high-risk job kept off its tier by cost is marked for review"
        d.decide(self.name, new, text)


# -- 9. budgets ---------------------------------------------------------------------------------


class Budget:
    """Routes around a budget that cannot take the job's estimate on its chosen tier.

    Reads ``FleetState.budgets`` (the dispatcher's snapshot); the worker's reservation
    is what enforces a budget, this only spares the job a trip to a tier it cannot pay
    for. ``cheaper`` budgets move it to the strongest allowed tier that costs less;
    ``park`` and ``reject`` budgets leave the tier to the worker, which acts on them.
    """

    name = "budget"

    def apply(self, d: Draft) -> None:
        if d.tier is None or not d.state.budgets or d.fleet.place.get(d.tier) not in ("rented", "paid"):
            return
        need = d.cost_on(d.tier)
        for b in d.state.budgets:
            if not scope_matches(b.scope, d.job):
                continue
            if b.left_usd >= need:
                d.note(self.name, f"budget {b.name}: ${b.left_usd:.4f} left, {d.tier} ~${need:.4f} fits")
                continue
            if b.on_exhausted != "cheaper" or d.pinned:
                d.note(self.name, f"budget {b.name}: ${b.left_usd:.4f} left, {d.tier} needs ~${need:.4f}; "
                                  f"the worker will {b.on_exhausted} it")
                return
            cheaper = [t for t in d.candidates() if d.cost_on(t) <= b.left_usd and t != d.tier]
            if not cheaper:
                d.note(self.name, f"budget {b.name}: ${b.left_usd:.4f} left and no allowed tier fits; "
                                  "the worker parks it until the period resets")
                return
            dear = {t for t in d.permitted if d.cost_on(t) > b.left_usd}
            d.forbid(dear)
            new = cheaper[-1]
            d.decide(self.name, new, f"budget {b.name}: ${b.left_usd:.4f} left, {d.tier} needs "
                                     f"~${need:.4f} -> {new} (~${d.cost_on(new):.4f})")
            return

# -- 5b. similar prompts that got a bad answer -----------------------------------------------


class SimilarBadAnswer:
    """Moves a job one tier above where a near-identical prompt recently got a bad answer.

    Reads a ``BadAnswerMemory`` its owner fills from feedback, judges and
    escalations; the stage itself is pure (the memory's contents in, a decision
    out). An explicit tier, risk or a premium user's tier is left alone, and the
    move stays within the allowed tiers, so privacy still holds.
    """

    name = "memory"

    def __init__(self, memory: BadAnswerMemory) -> None:
        self.memory = memory

    def apply(self, d: Draft) -> None:
        if not len(self.memory) or d.tier is None or d.pinned or d.settled or d.job.is_rules:
            return
        match = self.memory.nearest_text(d.job.text())
        if match is None:
            return
        fleet, failed = d.fleet, match.entry.tier
        seen = f"a similar prompt (similarity {match.similarity:.2f}" + (
            f", job {match.entry.job_id})" if match.entry.job_id else ")"
        ) + f" got a bad answer on {failed}"
        if fleet.rank.get(d.tier, -1) > fleet.rank.get(failed, -1):
            d.note(self.name, f"{seen}; {d.tier} is already above it")
            return
        up = [t for t in d.stronger(failed) if fleet.place[t] != "rules"]
        bigger = next((t for t in fleet.spill if t in up), up[0] if up else None)
        if bigger is None:
            d.note(self.name, f"{seen}, but no stronger tier is allowed for this job; it stays on {d.tier}")
            return
        d.decide(self.name, bigger, f"{seen} -> {bigger}")


def with_memory(memory: BadAnswerMemory, stages: Sequence[Stage] = ()) -> tuple[Stage, ...]:
    """The default stages (or ``stages``) with ``SimilarBadAnswer`` right after the kind stage."""
    out: list[Stage] = []
    for st in stages or DEFAULT_STAGES:
        out.append(st)
        if st.name == KindStage.name:
            out.append(SimilarBadAnswer(memory))
    return tuple(out)


DEFAULT_STAGES: tuple[Stage, ...] = (
    Constraints(),
    Rules(),
    Classify(),
    Session(),
    RiskStage(),
    KindStage(),
    Size(),
    Load(),
    Cost(),
    Budget(),
)
