"""Tokens of a running job, from the worker to the API: one Redis Stream per job.

``P:stream:{job_id}`` holds events in order, each a flat hash with ``t``:

- ``attempt``: a host call begins (``host``, ``tier``); the tokens after it belong to it;
- ``delta``: a piece of text (``text``);
- ``error``: the attempt failed after it had streamed (``message``).

The stream is bounded (``MAXLEN ~ 10000``: a runaway answer cannot fill Redis) and
expires an hour after its last write; the final answer is the job's Result, never
the stream, so losing a stream loses only the live view.

What a fallback mid-stream does (the API relays, :mod:`tierfleet.api.streaming`):
an attempt that fails *before* its first token costs the client nothing, the next
attempt's tokens simply follow; once tokens of one attempt were sent, a later
``attempt`` event (a fallback or an escalation) ends the client's stream with an
error chunk naming the job, so nobody sees two half-answers glued together, and the
job's finished answer stays readable at ``GET /v1/jobs/{id}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import redis

from . import keys
from .config import FleetConfig

__all__ = ["MAXLEN", "TTL_S", "TokenSink", "stream_key"]

MAXLEN = 10_000
TTL_S = 3600


def stream_key(config: FleetConfig, job_id: str) -> str:
    return keys.key(config, "stream", job_id)


class TokenSink:
    """Writes one job's events; a Redis hiccup never fails the job (the answer is stored
    anyway), it only thins the live view."""

    def __init__(self, client: redis.Redis, config: FleetConfig, job_id: str) -> None:
        self.redis = client
        self.key = stream_key(config, job_id)

    def _add(self, fields: dict[str, str]) -> None:
        with contextlib.suppress(redis.RedisError):
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self.key, fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.expire(self.key, TTL_S)
            pipe.execute()

    def attempt(self, tier: str, host: str) -> Callable[[str], None]:
        """Announce a host call; returns the callback its backend feeds tokens to."""
        self._add({"t": "attempt", "tier": tier, "host": host})
        return lambda text: self._add({"t": "delta", "text": text})

    def error(self, message: str) -> None:
        self._add({"t": "error", "message": message[:500]})
