"""Which producer owns a job the API admitted, so that one producer never reads another's.

A producer is a name behind one or more tokens: ``api.tokens_env`` holds entries
``name:token`` (several entries with one name are that producer's tokens, for
rotation) or a bare ``token``, which belongs to the producer ``default``. The open
API (no token) is ``default`` too, and so is every job submitted outside the API (the
Python API, the CLI), which has no owner record.

The API claims each job id for its caller before admitting the job
(``P:owner:{id}``, kept as long as results are); reading a job, its answer, its
stream or giving feedback on it needs the caller to own it. The record outlives
the result. Another producer's id
reads as unknown (404), and submitting under it is refused like any reused id, so
neither says whose it is or what it holds. A confidential job's words reach the
producer who submitted it and nobody else who merely holds a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import redis

from .. import keys
from ..config import FleetConfig
from ..errors import ConfigError, JobRejected

__all__ = ["DEFAULT", "Owners", "parse_tokens"]

DEFAULT = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Claim an id for a producer: taken if free, kept if already theirs, refused otherwise.
_CLAIM = """
local out = {}
for i, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if not cur then
    redis.call('SET', k, ARGV[1], 'EX', ARGV[2])
    out[i] = 1
  elseif cur == ARGV[1] then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


def parse_tokens(entries: Iterable[str]) -> dict[str, str]:
    """token -> producer name, from ``name:token`` or bare ``token`` entries."""
    out: dict[str, str] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, token = entry.partition(":")
        if not sep:
            name, token = DEFAULT, entry
        elif not _NAME.fullmatch(name) or not token:
            raise ConfigError(
                "api tokens: an entry is 'name:token' (name: letters, digits, _ . -, at most "
                "64) or a bare token; one entry is neither (its text is not shown)")
        if out.get(token, name) != name:
            raise ConfigError("api tokens: one token is listed for two producers")
        out[token] = name
    return out


class Owners:
    """The producer of every job the API admitted (``P:owner:{id}``).

    The API's routes call :meth:`claim` before submitting and :meth:`owns` before
    answering anything about a job id.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self._claim = client.register_script(_CLAIM)

    def _key(self, job_id: str) -> str:
        return keys.key(self.config, "owner", job_id)

    def claim(self, producer: str, job_ids: list[str]) -> list[bool]:
        """For each id: True when it is now ``producer``'s (new, or theirs already)."""
        if not job_ids:
            return []
        # Twice the results' TTL: a result's TTL restarts on every save (a job parked for
        # hours), and an owner record gone before its result would hand the job to
        # ``default``.
        ttl = max(1, 2 * int(self.config.reliability.result_expires_s))
        got = self._claim(keys=[self._key(i) for i in job_ids], args=[producer, ttl])
        return [bool(int(x)) for x in got]

    def claim_all(self, producer: str, job_ids: list[str], field: str = "id") -> None:
        """:meth:`claim` every id, or ``JobRejected`` naming the first one taken by another
        producer (``field`` may hold ``{i}``, the id's index) in the words of any reused id."""
        for i, ok in enumerate(self.claim(producer, job_ids)):
            if not ok:
                raise JobRejected(field.format(i=i),
                                  f"job id {job_ids[i]!r} is taken: give the job its own id")

    def mine(self, producer: str, job_ids: list[str]) -> list[bool]:
        """:meth:`owns` for many ids in one round trip."""
        if not job_ids:
            return []
        got = self.redis.mget([self._key(i) for i in job_ids])
        return [producer == DEFAULT if cur is None
                else (cur.decode() if isinstance(cur, bytes) else str(cur)) == producer
                for cur in got]

    def owns(self, producer: str, job_id: str) -> bool:
        """Whether ``producer`` may see ``job_id``: its claim, or no claim and ``default``."""
        cur = self.redis.get(self._key(job_id))
        if cur is None:
            return producer == DEFAULT
        return (cur.decode() if isinstance(cur, bytes) else str(cur)) == producer
