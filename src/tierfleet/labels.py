"""Labels from the fleet's own traffic: feedback, the quality check's escalations, shadow tests.

Why: a router trained on public benchmarks ranks a new domain's prompts barely
better than chance (issue #15); what lifts it is labels from the traffic it
serves. Three sources write them here:

- ``feedback``: the producer says an answer was good or bad (API or CLI), tied
  to the ledger record of the call that answered (:class:`AnswerNotes` keeps,
  per answered job, which call that was and the prompt to learn from);
- ``escalation``: the worker's quality check found the small answer poor and
  moved the job up, so the small model failed on that prompt;
- ``shadow``: a sampled job was also answered by the strong tier and a judge
  scored both answers (``shadow.py``).

Privacy: labels live in the fleet's Redis under the same rules as results. The
prompt is kept with the label (retraining needs the words) and read only by the
fleet's own processes; :meth:`Label.shown` is what operators see: bookkeeping and
scores, never the prompt, and for a confidential job no free-text note either.
A confidential job's label is written by workers of local tiers only (a shadow
test never sends it outside them), and training reads it on the fleet's host.

Bad-small labels also feed the ``BadAnswerMemory`` (``policy/memory.py``)
through :class:`RedisMemoryStore`, so prompts like one the small model failed go
one tier up at once, before any retraining.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from . import keys
from .config import FleetConfig
from .fleet import FleetView
from .policy.memory import DEFAULT_MAX_AGE_S, DEFAULT_MAX_SIZE, BadAnswer, prompt_vector
from .shown import CONFIDENTIAL

__all__ = ["AnswerNote", "AnswerNotes", "Label", "LabelStore", "RedisMemoryStore", "feedback_label"]

Source = Literal["feedback", "escalation", "shadow"]
QUALITY_CHECK_JUDGE = ("quality-check", "1")
FEEDBACK_JUDGE = ("producer", "1")


class Label(BaseModel):
    """One judged answer: which prompt, which tier and model, how good, judged by whom."""

    id: str
    source: Source
    job_id: str
    attempt: int = 1
    call: str | None = None  # the ledger record (job, attempt, call) of the judged answer
    ts: float = 0.0
    kind: str
    true_kind: str | None = None  # the producer's own kind, when it typed the job
    workflow: str = "default"
    privacy: str = "internal"
    tier: str
    model: str | None = None
    routed_small: bool = True  # the judged answer came from a tier below the strong one
    small_score: float | None = None  # 0..1
    large_score: float | None = None  # 0..1
    judge: str
    judge_version: str
    policy_version: str | None = None
    features: dict[str, float] = Field(default_factory=dict)  # tokens_in, p_small_ok, chars
    prompt: str | None = None  # for retraining; never shown (see the module doc)
    note: str | None = None

    @property
    def small_ok(self) -> float | None:
        """1 when the small answer was as good as the strong one: p_small_ok's target. With
        no strong answer to compare (feedback, an escalation), a score of 0.5 or more."""
        if self.small_score is None:
            return None
        return float(self.small_score >= (0.5 if self.large_score is None else self.large_score))

    @property
    def bad_small(self) -> bool:
        return self.routed_small and self.small_ok == 0.0

    def shown(self) -> dict[str, Any]:
        """An operator's view: no prompt; a confidential job's note is withheld."""
        d = self.model_dump(mode="json", exclude={"prompt"})
        if self.privacy == "confidential" and d.get("note"):
            d["note"] = CONFIDENTIAL
        return d

    def training_row(self) -> dict[str, Any] | None:
        """The line ``tierfleet train --labels`` reads, or None when there is nothing to learn."""
        if not self.prompt:
            return None
        row: dict[str, Any] = {"prompt": self.prompt}
        if self.routed_small and self.small_ok is not None:
            row["small_ok"] = self.small_ok
        if self.true_kind:
            row["kind"] = self.true_kind
        return row if len(row) > 1 else None


class LabelStore:
    """Labels in Redis: ``P:label:body`` (id -> JSON) and ``P:label:index`` (id by time).

    A label id names its source and job, so a redelivered escalation or a repeated
    shadow verdict writes one label; a producer's feedback replaces its earlier one.
    Kept ``learning.label_retention_days``.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self._body = keys.labels_body(config)
        self._index = keys.labels_index(config)
        self.retention_s = config.learning.label_retention_days * 86_400

    def add(self, label: Label, *, replace: bool = False) -> bool:
        """Store ``label``; False when one with its id exists and ``replace`` is off."""
        ts = label.ts or time.time()
        label = label.model_copy(update={"ts": ts})
        line = label.model_dump_json()
        if replace:
            new = self.redis.hset(self._body, label.id, line) == 1
        else:
            new = bool(self.redis.hsetnx(self._body, label.id, line))
            if not new:
                return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self._index, {label.id: ts})
        pipe.zrangebyscore(self._index, "-inf", ts - self.retention_s)
        _, old = pipe.execute()
        if old:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hdel(self._body, *old)
            pipe.zrem(self._index, *old)
            pipe.execute()
        return new or replace

    def get(self, label_id: str) -> Label | None:
        raw = self.redis.hget(self._body, label_id)
        return Label.model_validate_json(raw) if raw else None

    def since(self, start: float = 0.0, end: float | None = None) -> list[Label]:
        """Labels with ``start <= ts <= end``, oldest first."""
        ids = self.redis.zrangebyscore(self._index, start, "+inf" if end is None else end)
        if not ids:
            return []
        raws = self.redis.hmget(self._body, ids)
        return [Label.model_validate_json(r) for r in raws if r]

    def count(self) -> int:
        return int(self.redis.zcard(self._index))


# -- who answered: the anchor for feedback ---------------------------------------------------


class AnswerNote(BaseModel):
    """What a finished job's answer was and which ledger record billed it."""

    job_id: str
    attempt: int
    call: str | None = None
    tier: str
    model: str | None = None
    kind: str
    true_kind: str | None = None
    workflow: str = "default"
    privacy: str = "internal"
    tokens_in: int = 0
    p_small_ok: float | None = None
    policy_version: str | None = None
    prompt: str = ""


class AnswerNotes:
    """``P:answered:{job_id}``: kept as long as the job's result, for feedback to find."""

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config

    def put(self, note: AnswerNote) -> None:
        self.redis.set(keys.answered(self.config, note.job_id), note.model_dump_json(),
                       ex=self.config.reliability.result_expires_s)

    def get(self, job_id: str) -> AnswerNote | None:
        raw = self.redis.get(keys.answered(self.config, job_id))
        return AnswerNote.model_validate_json(raw) if raw else None


def is_small(config: FleetConfig, tier: str) -> bool:
    """A tier below the strong tier on the policy's ladder: its answers are the cheap ones."""
    fleet = FleetView.of(config)
    strong = config.learning.shadow.strong_tier
    rank = fleet.rank
    return tier in rank and rank[tier] < rank.get(strong, len(rank))


def features_of(note: AnswerNote) -> dict[str, float]:
    f = {"tokens_in": float(note.tokens_in), "chars": float(len(note.prompt))}
    if note.p_small_ok is not None:
        f["p_small_ok"] = float(note.p_small_ok)
    return f


def feedback_label(config: FleetConfig, note: AnswerNote, *, good: bool | None,
                   score: float | None, note_text: str | None = None) -> Label:
    """The label a producer's verdict on a job's answer makes (score wins over good/bad)."""
    if score is None:
        if good is None:
            raise ValueError("feedback needs --good, --bad or a score")
        score = 1.0 if good else 0.0
    if not 0.0 <= score <= 1.0:
        raise ValueError("score must be within 0..1")
    small = is_small(config, note.tier)
    return Label(
        id=f"feedback:{note.job_id}", source="feedback", job_id=note.job_id, attempt=note.attempt,
        call=note.call, ts=time.time(), kind=note.kind, true_kind=note.true_kind,
        workflow=note.workflow, privacy=note.privacy, tier=note.tier, model=note.model,
        routed_small=small, small_score=score if small else None,
        large_score=None if small else score, judge=FEEDBACK_JUDGE[0],
        judge_version=FEEDBACK_JUDGE[1], policy_version=note.policy_version,
        features=features_of(note), prompt=note.prompt or None,
        note=(note_text or "")[:500] or None,
    )


# -- the bad-answer memory in Redis ------------------------------------------------------------


class RedisMemoryStore:
    """A ``MemoryStore`` over one Redis sorted set (entry JSON scored by time).

    Workers :meth:`append` one entry at a time without a read (no lost update when
    two workers add at once), trimmed to the memory's size and age bounds; the
    dispatcher :meth:`load` s it into its ``BadAnswerMemory``. Entries hold a
    hashed sketch of the prompt, a tier and a job id: no words.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig, *,
                 max_size: int = DEFAULT_MAX_SIZE, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self.redis = client
        self.key = keys.bad_memory(config)
        self.max_size = max_size
        self.max_age_s = max_age_s

    def load(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.redis.zrange(self.key, 0, -1)]

    def save(self, entries: Sequence[dict[str, Any]]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key)
        if entries:
            pipe.zadd(self.key, {json.dumps(e, sort_keys=True): float(e["at"]) for e in entries})
        pipe.execute()

    def append(self, entry: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.key, {json.dumps(entry, sort_keys=True): float(entry["at"])})
        pipe.zremrangebyscore(self.key, "-inf", float(entry["at"]) - self.max_age_s)
        pipe.zremrangebyrank(self.key, 0, -self.max_size - 1)
        pipe.execute()

    def add_bad(self, text: str, tier: str, now: float, job_id: str = "", note: str = "") -> None:
        self.append(BadAnswer(prompt_vector(text), tier, now, job_id, note).to_json())


def remember_bad(client: redis.Redis, config: FleetConfig, labels: Iterable[Label]) -> int:
    """Feed the memory with the bad-small ones of ``labels``; returns how many."""
    store = RedisMemoryStore(client, config)
    n = 0
    for lb in labels:
        if lb.bad_small and lb.prompt:
            store.add_bad(lb.prompt, lb.tier, lb.ts or time.time(), lb.job_id, lb.source)
            n += 1
    return n


class NoAnswer(LookupError):
    """Feedback for a job with no stored answer (unknown id, not finished, or expired)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} has no answer to give feedback on "
                         "(unknown, not finished, or older than the result's retention)")


def record_feedback(client: redis.Redis, config: FleetConfig, job_id: str, *,
                    good: bool | None = None, score: float | None = None,
                    note: str | None = None) -> Label:
    """A producer's verdict on job ``job_id``'s answer, stored as a label (the latest wins).

    Tied to the ledger record of the call that answered (``Label.call``); a bad
    verdict on a small tier's answer also goes into the bad-answer memory.
    """
    answered = AnswerNotes(client, config).get(job_id)
    if answered is None:
        raise NoAnswer(job_id)
    label = feedback_label(config, answered, good=good, score=score, note_text=note)
    LabelStore(client, config).add(label, replace=True)
    remember_bad(client, config, [label])
    return label
