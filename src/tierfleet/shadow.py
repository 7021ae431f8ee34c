"""Shadow tests: a share of small-answered jobs is also answered by the strong tier and judged.

Why: feedback is rare and escalations catch only answers that are visibly broken
(empty, refused, invalid JSON). A shadow test says, for a sampled prompt, whether
the small answer was as good as the strong one: p_small_ok's own target.

Off the job's critical path: the sample is taken after the job's result is
stored, as a new job on the strong tier's queue (id ``sh.{job id}``, no cache, no
fallback), so the producer never waits for it. Under its own daily budget
(``learning.shadow.daily_budget_usd``, estimated spend reserved atomically when a
sample is taken), and never for a job whose privacy forbids the strong tier: a
confidential job is sampled only when the strong tier is local.

Judges, in the order ``judge = "auto"`` tries them: deterministic checks where the
job allows them (an expected label's exact match, JSON valid against the job's
schema, the extraction fields present, JSON where JSON was asked), else a strong
model with a rubric prompt. Each label names its judge and version.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import redis

from . import keys
from .config import FleetConfig
from .envelope import Delivery
from .fleet import DEFAULT_OUT_TOKENS, FleetView
from .jobs import Job, Route
from .labels import AnswerNote, Label, LabelStore, RedisMemoryStore, features_of, is_small
from .ledger import day_of
from .pricing import to_nanos

__all__ = ["SHADOW_OF", "DeterministicJudge", "Judge", "RubricJudge", "ShadowSampler"]

SHADOW_OF = "tierfleet_shadow_of"  # job metadata: the id of the job this one shadows
EXPECTED = "expected"  # job metadata: the right answer, for an exact-match judge
FIELDS = "fields"  # job metadata: comma-separated fields an extraction must hold

# Reserve the estimate only if the day's total stays within the budget (KEYS[1] spent nanos).
_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if spent + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"""



def shadow_id(job_id: str) -> str:
    """The shadow job's id: ``sh.`` + the job's, or + its hash when that would pass
    the id limit (cutting it would give two long ids sharing a prefix one shadow)."""
    sid = f"sh.{job_id}"
    return sid if len(sid) <= 128 else f"sh.{hashlib.sha256(job_id.encode()).hexdigest()}"

class Judge(Protocol):
    """Scores a small and a strong answer to one job, each 0..1; None: cannot judge this job."""

    name: str
    version: str

    def score(self, job: Job, small: str, large: str) -> tuple[float, float] | None: ...


def _strip_fence(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[-1].rsplit("```", 1)[0]
    return t.strip()


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").lower())


class DeterministicJudge:
    """Checks that need no model: exact label, schema, fields, JSON."""

    name = "deterministic"
    version = "1"

    @staticmethod
    def applies(job: Job) -> bool:
        return bool(job.metadata.get(EXPECTED) or job.metadata.get(FIELDS)
                    or job.json_schema is not None or job.json_output)

    def score(self, job: Job, small: str, large: str) -> tuple[float, float] | None:
        if not self.applies(job):
            return None
        return self._one(job, small), self._one(job, large)

    @staticmethod
    def _one(job: Job, text: str) -> float:
        expected = job.metadata.get(EXPECTED)
        if expected:
            return float(_norm(text) == _norm(expected))
        fields = [f.strip() for f in job.metadata.get(FIELDS, "").split(",") if f.strip()]
        if job.json_schema is not None or job.json_output or fields:
            try:
                doc = json.loads(_strip_fence(text))
            except ValueError:
                return 0.0
            if job.json_schema is not None:
                from .quality import schema_verdict

                if not schema_verdict(job.json_schema, _strip_fence(text)).ok:
                    return 0.0
            if fields:
                if not isinstance(doc, dict):
                    return 0.0
                return sum(1 for f in fields if doc.get(f) not in (None, "")) / len(fields)
            return 1.0
        return 0.0


RUBRIC = """You grade two answers to the same request. Score each from 0 to 10 for
correctness, completeness and following the request's instructions. Reply with JSON
only: {{"a": <score of answer A>, "b": <score of answer B>}}.

REQUEST:
{request}

ANSWER A:
{a}

ANSWER B:
{b}
"""


class RubricJudge:
    """A strong model grades both answers with a rubric prompt (answers shown as A/B in an
    order fixed by the job id, so the grader's position bias does not favour one side)."""

    name = "rubric"
    version = "1"

    def __init__(self, ask: Callable[[str], str]) -> None:
        self.ask = ask

    def score(self, job: Job, small: str, large: str) -> tuple[float, float] | None:
        swap = zlib.crc32(job.id.encode()) & 1 == 1
        a, b = (large, small) if swap else (small, large)
        reply = self.ask(RUBRIC.format(request=job.text()[:8000], a=a[:8000], b=b[:8000]))
        m = re.search(r"\{[^{}]*\}", reply or "")
        if not m:
            return None
        try:
            doc = json.loads(m.group(0))
            sa, sb = float(doc["a"]) / 10, float(doc["b"]) / 10
        except (ValueError, KeyError, TypeError):
            return None
        sa, sb = min(1.0, max(0.0, sa)), min(1.0, max(0.0, sb))
        return (sb, sa) if swap else (sa, sb)


def sampled(job_id: str, rate: float) -> bool:
    """Sticky per job id: a redelivery makes the same choice."""
    return rate > 0 and (zlib.crc32(f"shadow|{job_id}".encode()) % 10_000) < rate * 10_000


class ShadowSampler:
    """Takes samples after a small answer is stored, and turns the strong answer into a label."""

    def __init__(self, client: redis.Redis, config: FleetConfig,
                 publish: Callable[[Delivery], None]) -> None:
        self.redis = client
        self.config = config
        self.publish = publish
        self.fleet = FleetView.of(config)
        self.labels = LabelStore(client, config)
        self._reserve = client.register_script(_RESERVE)

    def rate_for(self, job: Job) -> float:
        sc = self.config.learning.shadow
        for k in (f"workflow:{job.workflow}", f"kind:{job.kind.value}"):
            if k in sc.rates:
                return float(sc.rates[k])
        return sc.rate

    def maybe_sample(self, d: Delivery, answer: str, note: AnswerNote) -> Delivery | None:
        """Publish the shadow job for ``d`` when it is sampled and the budget allows."""
        sc, job = self.config.learning.shadow, d.job
        strong = sc.strong_tier
        if (job.metadata.get(SHADOW_OF) or strong not in self.config.tiers
                or not is_small(self.config, d.tier)
                or not self.config.tier_allowed(strong, job.privacy.value)  # privacy first
                or not sampled(job.id, self.rate_for(job))):
            return None
        model = self.fleet.model_on(strong, d.route.kind.value)
        if model is None:
            return None
        estimate = self.fleet.cost(strong, model, note.tokens_in, job.max_tokens or DEFAULT_OUT_TOKENS)
        day = day_of(time.time())
        if not self._reserve(keys=[keys.shadow_spent(self.config, day)],
                             args=[to_nanos(estimate), to_nanos(sc.daily_budget_usd)]):
            return None
        sid = shadow_id(job.id)
        self.redis.set(keys.shadow(self.config, sid),
                       json.dumps({"answer": answer, "note": note.model_dump(mode="json")}),
                       ex=self.config.reliability.result_expires_s)
        shadow_job = job.model_copy(update={
            "id": sid, "cache": False, "stream": False, "tier": strong, "model": None,
            "metadata": {**job.metadata, SHADOW_OF: job.id},
        })
        route = Route(tier=strong, kind=d.route.kind, model=model, fallbacks=[],
                      tokens_in=note.tokens_in, policy_version=d.first_route.policy_version)
        out = Delivery(job=shadow_job, route=route)
        self.publish(out)
        return out

    def spent_today(self) -> float:
        raw = self.redis.get(keys.shadow_spent(self.config, day_of(time.time())))
        return int(raw or 0) / 1e9

    def finish(self, d: Delivery, large: str, judge: Judge | None) -> Label | None:
        """The strong answer of shadow job ``d`` is in: judge both, store the label."""
        raw = self.redis.get(keys.shadow(self.config, d.job.id))
        if not raw or judge is None:
            return None
        kept: dict[str, Any] = json.loads(raw)
        note = AnswerNote.model_validate(kept["note"])
        original = d.job.model_copy(update={"id": note.job_id})
        scores = judge.score(original, kept["answer"], large)
        if scores is None:
            return None
        small_score, large_score = scores
        label = Label(
            id=f"shadow:{note.job_id}", source="shadow", job_id=note.job_id, attempt=note.attempt,
            call=note.call, ts=time.time(), kind=note.kind, true_kind=note.true_kind,
            workflow=note.workflow, privacy=note.privacy, tier=note.tier, model=note.model,
            routed_small=True, small_score=small_score, large_score=large_score,
            judge=judge.name, judge_version=judge.version, policy_version=note.policy_version,
            features=features_of(note), prompt=note.prompt or None,
        )
        if self.labels.add(label) and label.bad_small:
            RedisMemoryStore(self.redis, self.config).add_bad(
                note.prompt, note.tier, label.ts, note.job_id, "shadow")
        self.redis.delete(keys.shadow(self.config, d.job.id))
        return label
