"""Exact-match answer cache: the same question to the same model is paid for once.

The key is a SHA-256 over everything that shapes the answer: the normalised
words (roles included), a hash of every image, the kind, the model, the
parameters (max_tokens, json_output, temperature), any kind-specific input,
and the job's privacy level, so an answer never crosses privacy levels.

Normalisation: Unicode NFC, whitespace runs collapsed and case folded, so
"Summarise  this" and "summarise this" share an answer. Code is the exception:
case and indentation carry meaning there, so code jobs only lose trailing
spaces and keep their line structure.

Never cached:

- jobs that ask for no cache (``cache=False``): never served, and their answer
  is not stored either, since the producer said it must not be reused;
- ``confidential`` jobs: their answers stay out of a shared store, and a key
  derived from their text would let anyone with Redis access confirm a guessed
  input;
- rules jobs (they cost nothing) and answers over ``max_answer_bytes``.

Hits are billed by the worker as attempts with ``cache_hit=True`` and
``outcome="cached"`` (cost 0, the baseline still counted), so the ledger shows
what the cache saved.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from typing import Any

import redis
from pydantic import BaseModel, ValidationError

from . import keys
from .config import FleetConfig
from .jobs import Job, Kind, Privacy

__all__ = ["AnswerCache", "CachedAnswer", "cache_key", "normalise"]

_KEY_VERSION = "v1"
_WS = re.compile(r"\s+")
_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
DEFAULT_MAX_ANSWER_BYTES = 1_000_000


class CachedAnswer(BaseModel):
    answer: dict[str, Any]
    model: str | None
    kind: str
    stored_at: float
    key: str


def normalise(text: str, kind: Kind) -> str:
    text = unicodedata.normalize("NFC", text)
    if kind is Kind.CODE:
        return _TRAILING_WS.sub("", text.replace("\r\n", "\n")).strip("\n")
    return _WS.sub(" ", text).strip().casefold()


def _sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def _temperature(job: Job) -> float | None:
    # Job has no temperature field; a producer that varies it says so in metadata.
    value = job.metadata.get("temperature")
    return None if value is None else float(value)


def cache_key(job: Job, model: str | None, prefix: str = "tierfleet") -> str:
    if job.messages:
        words = [[m.role, normalise(m.content, job.kind), [_sha(i) for i in m.images]] for m in job.messages]
    else:
        words = [["user", normalise(job.prompt or "", job.kind), []]]
    material = {
        "v": _KEY_VERSION,
        "words": words,
        "images": [_sha(i) for i in job.images],
        "input": job.input,
        "kind": job.kind.value,
        "model": model,
        "max_tokens": job.max_tokens,
        "json_output": job.json_output,
        "temperature": _temperature(job),
        "privacy": job.privacy.value,
    }
    digest = _sha(json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return f"{prefix}:cache:{job.privacy.value}:{digest}"


class AnswerCache:
    """Answers by :func:`cache_key` under ``P:cache:{privacy}:{digest}``, expiring after ``cache.ttl_s``.

    The runner asks :meth:`get` before calling a model and :meth:`put` after a good
    answer; :meth:`allowed` is the whole cache policy (see the module docstring), so
    callers never repeat it.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        config: FleetConfig,
        *,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        self.redis = redis_client
        self.config = config
        self.max_answer_bytes = max_answer_bytes

    def allowed(self, job: Job) -> bool:
        """Whether this job may be answered from, or stored in, the cache."""
        return (
            self.config.cache.enabled
            and job.cache
            and job.privacy is not Privacy.CONFIDENTIAL
            and not job.is_rules
        )

    def key(self, job: Job, model: str | None) -> str:
        return cache_key(job, model, keys.cache_prefix(self.config))

    def get(self, job: Job, model: str | None) -> CachedAnswer | None:
        if not self.allowed(job):
            return None
        key = self.key(job, model)
        raw = self.redis.get(key)
        if raw is None:
            return None
        try:
            return CachedAnswer.model_validate_json(raw)
        except ValidationError:
            # A damaged entry is a miss, and is removed so it is not read again.
            self.redis.delete(key)
            return None

    def put(self, job: Job, model: str | None, answer: dict[str, Any]) -> None:
        if not self.allowed(job):
            return
        key = self.key(job, model)
        entry = CachedAnswer(answer=answer, model=model, kind=job.kind.value, stored_at=time.time(), key=key)
        data = entry.model_dump_json()
        if len(data.encode()) > self.max_answer_bytes:
            return
        self.redis.set(key, data, ex=self.config.cache.ttl_s)
