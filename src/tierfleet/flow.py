"""Flow control per host and provider account, shared by every worker through Redis.

Each ``[flow.NAME]`` limits requests and tokens per window (a sliding log: exact,
so the provider never sees more than its limit in any window of its length) and
concurrent calls. A 429's ``Retry-After`` sets a per-host "blocked until" that
the same check reads, so a rate limit makes jobs wait instead of opening the breaker.

Why a Lua script and not the ``limits`` library: ``limits`` checks one limit per
``hit``, so taking a request slot and a token allowance together (all or none)
would need two calls that can disagree; it has no concurrency limit, no way to
correct a hit's cost with the tokens the host reported, and no "blocked until".
One script does all four in one atomic step and says how long to wait.

Keys (``P`` = key prefix): ``P:flow:{name}:req`` zset call -> time,
``P:flow:{name}:tok`` hash call -> tokens, ``P:flow:{name}:conc`` hash call -> deadline,
``P:flow:host:{host}:until`` the Retry-After end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from . import keys
from .config import FleetConfig

__all__ = ["Flow", "Slot"]

# KEYS: the host's until key, then per flow: req zset, tok hash, conc hash.
# ARGV: now, call, tokens, then per flow: rpm, tpm, conc, window, deadline, conc_wait.
# Returns "0" with the slot taken, else the seconds to wait (nothing taken).
_ACQUIRE = """
local now, call, tokens = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local wait = 0
local untilv = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilv > now then wait = untilv - now end
local n = (#KEYS - 1) / 3
for f = 0, n - 1 do
  local req, tok, conc = KEYS[2 + f * 3], KEYS[3 + f * 3], KEYS[4 + f * 3]
  local a = 4 + f * 6
  local rpm, tpm, climit = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local window, cwait = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 5])
  local old = redis.call('ZRANGEBYSCORE', req, '-inf', now - window)
  for _, m in ipairs(old) do redis.call('HDEL', tok, m) end
  redis.call('ZREMRANGEBYSCORE', req, '-inf', now - window)
  local live = redis.call('ZRANGE', req, 0, -1, 'WITHSCORES')
  local count = #live / 2
  if rpm > 0 and count >= rpm then
    local w = tonumber(live[(count - rpm) * 2 + 2]) + window - now
    if w > wait then wait = w end
  end
  if tpm > 0 and count > 0 then
    local used = 0
    local vals = redis.call('HMGET', tok, unpack(redis.call('ZRANGE', req, 0, -1)))
    local weights = {}
    for i = 1, count do weights[i] = tonumber(vals[i] or '0') or 0; used = used + weights[i] end
    if used + tokens > tpm then
      -- Wait until enough of the oldest calls leave the window (forever-large jobs run alone).
      local i = 1
      while i <= count and used + tokens > tpm do used = used - weights[i]; i = i + 1 end
      local w = tonumber(live[(i - 1) * 2]) + window - now
      if w > wait then wait = w end
    end
  end
  if climit > 0 then
    local c = redis.call('HGETALL', conc)
    local busy = 0
    for j = 1, #c, 2 do
      if tonumber(c[j + 1]) < now then redis.call('HDEL', conc, c[j]) else busy = busy + 1 end
    end
    if busy >= climit and cwait > wait then wait = cwait end
  end
end
if wait > 0 then return tostring(wait) end
for f = 0, n - 1 do
  local a = 4 + f * 6
  local ttl = math.ceil(tonumber(ARGV[a + 3]) * 2) + 1
  redis.call('ZADD', KEYS[2 + f * 3], now, call)
  redis.call('HSET', KEYS[3 + f * 3], call, tokens)
  redis.call('EXPIRE', KEYS[2 + f * 3], ttl)
  redis.call('EXPIRE', KEYS[3 + f * 3], ttl)
  if tonumber(ARGV[a + 2]) > 0 then
    redis.call('HSET', KEYS[4 + f * 3], call, ARGV[a + 4])
    redis.call('EXPIRE', KEYS[4 + f * 3], math.ceil(tonumber(ARGV[a + 4]) - now) + 1)
  end
end
return '0'
"""


@dataclass(frozen=True)
class Slot:
    """A call admitted by every flow of its host; :meth:`Flow.release` ends it."""

    call: str
    flows: tuple[str, ...]


class Flow:
    """Admits host calls within their flows' limits and says how long to wait otherwise."""

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self._acquire = client.register_script(_ACQUIRE)

    def _k(self, name: str, what: str) -> str:
        return keys.key(self.config, "flow", name, what)

    def until_key(self, host: str) -> str:
        return keys.key(self.config, "flow", "host", host, "until")

    def flows_of(self, host: str) -> list[str]:
        return [n for n, f in self.config.flow.items() if host in f.hosts]

    def acquire(self, host: str, call: str, tokens: int, *, hold_s: float,
                now: float | None = None) -> Slot | float:
        """Take a slot for one call of ``tokens`` (input + expected output): the Slot, or the
        seconds until one may be free (nothing taken)."""
        now = time.time() if now is None else now
        names = self.flows_of(host)
        ks = [self.until_key(host)]
        args: list[float | int | str] = [now, call, tokens]
        for n in names:
            f = self.config.flow[n]
            ks += [self._k(n, "req"), self._k(n, "tok"), self._k(n, "conc")]
            # A concurrency slot has no known end: look again after a small part of the window.
            args += [f.requests_per_minute or 0, f.tokens_per_minute or 0, f.concurrency or 0,
                     f.window_s * (1 + f.safety), now + hold_s, max(f.window_s / 60, 0.01)]
        wait = float(self._acquire(keys=ks, args=args))
        return Slot(call, tuple(names)) if wait <= 0 else wait

    def release(self, slot: Slot, tokens: int | None = None) -> None:
        """End the call: free its concurrency slot; with the tokens the host reported, count
        those instead of the estimate (the window's token total stays true)."""
        pipe = self.redis.pipeline(transaction=False)
        for n in slot.flows:
            pipe.hdel(self._k(n, "conc"), slot.call)
            if tokens is not None:
                pipe.hset(self._k(n, "tok"), slot.call, tokens)
        pipe.execute()

    def block(self, host: str, until: float) -> None:
        """A 429 said when to come back: nobody calls ``host`` before ``until``."""
        k = self.until_key(host)
        current = float(self.redis.get(k) or 0)
        if until > current:
            self.redis.set(k, repr(until), px=max(int((until - time.time()) * 1000), 1) + 1000)
