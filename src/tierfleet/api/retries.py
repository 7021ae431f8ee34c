"""Which job a chat request stands for, so that a retried request never runs twice.

Three ways a request names its job, strongest first:

1. ``Idempotency-Key`` header: the job id is derived from the calling producer
   (``tenants``: the name behind the token, so a rotated token keeps its keys) and
   the key, so one producer's key never lands on another producer's job;
2. a producer-set id (``tierfleet.id`` in the body or ``X-Tierfleet-Job-Id``);
3. neither: a fresh id, remembered for ``api.retry_window_s`` under a fingerprint
   of (producer, body). A request the OpenAI SDK marks as a retry
   (``x-stainless-retry-count`` > 0) with the same fingerprint gets the first
   try's id. A *first* try never attaches: two people asking the same thing are
   two jobs (the answer cache keeps that cheap), only a retry is the same job.

Resubmitting under a known id is safe: admission is idempotent by id (same body:
the same job, no second message; another body: ``JobRejected("id")``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from .. import keys
from ..config import FleetConfig

__all__ = ["JobIdentity", "fingerprint", "identify", "remember", "retry_count"]

RETRY_HEADER = "x-stainless-retry-count"


@dataclass(frozen=True)
class JobIdentity:
    job_id: str
    # "idempotency-key", "producer", "retry" (attached to an earlier try) or "new".
    source: str
    fingerprint: str


def retry_count(headers: Mapping[str, str]) -> int:
    """How many tries came before this one, as the SDK counts them (0 when unmarked)."""
    raw = headers.get(RETRY_HEADER, "0")
    try:
        return max(0, int(raw.strip()))
    except ValueError:
        return 0


def fingerprint(producer: str, body: Any) -> str:
    """One producer's one request body, whatever order its JSON keys came in."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{producer}\x00{canon}".encode()).hexdigest()


def _recent_key(config: FleetConfig, fp: str) -> str:
    return keys.key(config, "api", "recent", fp)


def identify(client: redis.Redis, config: FleetConfig, headers: Mapping[str, str], body: Any,
             producer_id: str | None, producer: str) -> JobIdentity:
    """The job id a request of ``producer`` stands for (see the module doc for the order)."""
    fp = fingerprint(producer, body)
    # A key of spaces is no key: it would make every such request one job.
    key = (headers.get("idempotency-key") or "").strip()
    if key:
        digest = hashlib.sha256(f"{producer}\x00{key}".encode()).hexdigest()[:32]
        return JobIdentity(f"idem-{digest}", "idempotency-key", fp)
    if producer_id:
        return JobIdentity(producer_id, "producer", fp)
    if retry_count(headers) > 0:
        earlier = client.get(_recent_key(config, fp))
        if earlier:
            return JobIdentity(str(earlier), "retry", fp)
    return JobIdentity(uuid.uuid4().hex, "new", fp)


def remember(client: redis.Redis, config: FleetConfig, ident: JobIdentity) -> None:
    """Let this request's retries find its job. Only fresh ids need it: the others are
    derived from what the retry carries anyway."""
    if ident.source == "new":
        client.set(_recent_key(config, ident.fingerprint), ident.job_id,
                   ex=max(1, int(config.api.retry_window_s)))
