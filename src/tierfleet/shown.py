"""What an operator is shown of a job: one definition for every operator surface.

Flower's task list and pages, Celery's result meta and log lines, ``dlq list`` and the
task's return value are read by people who run the fleet, not by the job's producer.
They get a job's bookkeeping (id, kind, workflow, tier, trail, attempts, cost), never
its words: no prompt, messages, images, input or answer, for any job. For a
confidential job, free text that can quote the job (a host's error, a failed rule's
message, a dead letter's reason) is scrubbed of every word the job contains, and the
route shows only the tiers its privacy allows.

The job's own records (its result, the parked and dead-letter bodies a replay needs)
keep everything; only the fleet's own processes and the job's producer read them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .config import FleetConfig
from .envelope import Delivery
from .jobs import Result

__all__ = [
    "CONFIDENTIAL",
    "JobDead",
    "JobFailed",
    "JobNotSucceeded",
    "JobParked",
    "crash_error",
    "is_confidential",
    "not_succeeded",
    "redacted_kwargs",
    "scrub",
    "shown_dead_letter",
    "shown_delivery",
    "shown_kwargs",
    "task_label",
    "task_summary",
]

CONFIDENTIAL = "<confidential>"
SCRUBBED = "…"
# Free text shown for a job is cut here: a log line or a table cell, not a document.
MAX_TEXT = 300
# Celery cuts a shown kwargs repr at 1 KiB; ours stays well under it.
MAX_KWARGS_REPR = 1024
_WORD = re.compile(r"[^\W_]{4,}|\w{4,}")


class JobNotSucceeded(Exception):
    """Raised by the task after the job's result is stored, so Celery and Flower show the
    job's real state. Its message is operator-safe (see :func:`task_summary`)."""


class JobFailed(JobNotSucceeded):
    """The job's result is FAILED (a bad request, a rule that said no, an internal error)."""


class JobDead(JobNotSucceeded):
    """The job is a dead letter: every allowed tier was down on every try."""


class JobParked(JobNotSucceeded):
    """No allowed tier is up now; the job waits in the parked set for its next try."""


def is_confidential(job: Mapping[str, Any]) -> bool:
    return job.get("privacy") == "confidential"


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON-like value, keys included (a rules input's keys are words too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _job_text(job: Mapping[str, Any], extra: tuple[str, ...] = ()) -> str:
    parts = [*_strings(job.get("prompt")), *_strings(job.get("input"))]
    for m in job.get("messages") or []:
        if isinstance(m, Mapping):
            parts.extend(_strings(m.get("content")))
    parts.extend(extra)
    return "\n".join(parts)


def scrub(text: str | None, job: Mapping[str, Any], *, extra: tuple[str, ...] = ()) -> str | None:
    """``text`` as shown to operators: for a confidential job every word of 4+ characters
    that occurs in the job's words (or in ``extra``, say its answer) becomes ``…``.

    A host's error or a rule's message may quote the job; its own words (host names,
    status codes, what failed) survive unless the job happens to contain them too.
    """
    if text is None:
        return None
    text = text[:MAX_TEXT]
    if not is_confidential(job):
        return text
    haystack = _job_text(job, extra)
    if not haystack:
        return text
    return _WORD.sub(lambda m: SCRUBBED if m.group(0) in haystack else m.group(0), text)


def task_label(d: Delivery) -> str:
    """The name Flower and Celery's log lines show (Celery's ``shadow``): ``kind@tier``,
    with the tiers already tried before it, ``code@local-gpu>local-mac``."""
    return f"{d.route.kind.value}@{'>'.join((*d.trail, d.tier))}"


def shown_delivery(d: Delivery, config: FleetConfig | None) -> dict[str, Any]:
    """A delivery as an operator sees it: bookkeeping only, never the job's words.

    ``next`` is the privacy-filtered rest of the chain; without a config to filter by,
    a confidential job shows none (a stale list could name tiers it may never reach)."""
    job = d.job
    raw = job.model_dump(mode="json")
    privacy = job.privacy.value
    view: dict[str, Any] = {
        "job_id": job.id,
        "kind": d.route.kind.value,
        "workflow": job.workflow,
        "privacy": privacy,
        "tier": d.tier,
        "model": d.route.model,
        "trail": list(d.trail),
        "attempt": d.attempt,
        "parks": d.parks,
        # What the runner may still move it to: the privacy-filtered chain only.
        "next": ([t for t in d.route.fallbacks if config.tier_allowed(t, privacy)]
                 if config is not None else
                 [] if job.privacy.value == "confidential" else list(d.route.fallbacks)),
    }
    hops = [scrub(r.text, raw) for r in d.route.reasons if r.stage == "worker"]
    if hops:
        view["hops"] = hops
    return view


def shown_kwargs(d: Delivery, config: FleetConfig | None) -> str:
    """The ``kwargsrepr`` a delivery is published with: what Flower shows as its kwargs."""
    return json.dumps(shown_delivery(d, config), ensure_ascii=False)[:MAX_KWARGS_REPR]


def task_summary(result: Result, job: Mapping[str, Any]) -> dict[str, Any]:
    """What the Celery task returns (Flower's Result column, ``celery-task-meta-*``,
    Celery's "Task succeeded" log line): the job's bookkeeping, never its answer.
    The producer reads the full result from the result store."""
    return {
        "job_id": result.job_id,
        "status": result.status.value,
        "kind": result.kind,
        "tier": result.tier,
        "trail": list(result.trail),
        "attempts": result.attempts,
        "cost_usd": round(result.cost_usd, 6),
        "cache_hit": result.cache_hit,
        "error": scrub(result.error, job, extra=(result.text or "",)),
    }


def not_succeeded(result: Result, job: Mapping[str, Any]) -> JobNotSucceeded:
    """The exception that makes Celery record a stored non-success as FAILURE (or RETRY)."""
    cls = {"dead": JobDead, "parked": JobParked}.get(result.status.value, JobFailed)
    s = task_summary(result, job)
    return cls(f"job {result.job_id} {s['status']} on {'>'.join(s['trail']) or s['tier']} "
               f"after {s['attempts']} attempt(s): {s['error'] or 'no reason given'}")


def crash_error(job: Mapping[str, Any], exc: BaseException) -> JobFailed:
    """What Celery logs and stores for a runner crash: the exception's type and a scrubbed
    message (a validation error of a confidential job would quote its input)."""
    return JobFailed(f"job {job.get('id')} crashed the runner: {type(exc).__name__}: "
                     f"{scrub(str(exc), job)}")


def redacted_kwargs(kwargs: Mapping[str, Any], config: FleetConfig) -> dict[str, Any]:
    """A delivery's kwargs with a confidential job's words replaced, its route showing only
    allowed tiers and its reasons scrubbed; other jobs' kwargs as they are."""
    job = kwargs.get("job") or {}
    if not is_confidential(job):
        return dict(kwargs)
    shown_job = {**job}
    for field in ("prompt", "messages", "input"):
        if job.get(field):
            shown_job[field] = CONFIDENTIAL
    shown_job["images"] = []
    route = dict(kwargs.get("route") or {})
    route["fallbacks"] = [t for t in route.get("fallbacks") or []
                          if config.tier_allowed(t, "confidential")]
    route["reasons"] = [{**r, "text": scrub(str(r.get("text", "")), job)}
                        for r in route.get("reasons") or [] if isinstance(r, Mapping)]
    return {**kwargs, "job": shown_job, "route": route}


def shown_dead_letter(entry: Mapping[str, Any], config: FleetConfig) -> dict[str, Any]:
    """A dead-letter entry as ``dlq list`` shows it (the stored entry keeps everything)."""
    delivery = entry.get("delivery") or {}
    job = delivery.get("job") or {}
    return {**entry, "delivery": redacted_kwargs(delivery, config),
            "reason": scrub(entry.get("reason"), job)}
