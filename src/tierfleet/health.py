"""Host health: a cached probe per host and a circuit breaker per host kept in Redis.

The breaker is shared by every worker and dispatcher: once one process sees a
host fail, nobody sends there until the open period ends and a single probe
(half-open) sees it answer again.

States:  closed --(N failures)--> open --(open_s elapsed)--> half-open
         half-open --(probe ok)--> closed;  half-open --(probe fails)--> open
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis

from . import keys
from .backends.base import Backend, HostHealth
from .config import FleetConfig

BreakerState = Literal["closed", "open", "half-open"]


@dataclass(frozen=True)
class BreakerView:
    host: str
    state: BreakerState
    failures: int
    open_until: float
    reason: str


class Breaker:
    """One circuit breaker per host, shared by every process through ``P:breaker:{host}``.

    The runner counts failures and successes here and asks :meth:`allow` before
    each call; the dispatcher reads :meth:`open_hosts` so the policy routes around
    open hosts; ``tierfleet status`` and the metrics read :meth:`views`.
    Guarantee: while a host is open nobody is sent there, and when its open period
    ends exactly one caller wins the half-open probe.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.rel = config.reliability

    def _key(self, host: str) -> str:
        return keys.breaker(self.config, host)

    def view(self, host: str) -> BreakerView:
        d = self.redis.hgetall(self._key(host)) or {}
        until = float(d.get("open_until", 0) or 0)
        failures = int(d.get("failures", 0) or 0)
        if until == 0:
            state: BreakerState = "closed"
        elif time.time() < until:
            state = "open"
        else:
            state = "half-open"
        return BreakerView(host, state, failures, until, d.get("reason", ""))

    def views(self) -> list[BreakerView]:
        return [self.view(h) for h in self.config.hosts]

    def open_hosts(self) -> frozenset[str]:
        """Hosts nobody should send to right now (open, not yet due a probe)."""
        pipe = self.redis.pipeline(transaction=False)
        names = list(self.config.hosts)
        for h in names:
            pipe.hget(self._key(h), "open_until")
        now = time.time()
        return frozenset(h for h, u in zip(names, pipe.execute(), strict=True) if u and now < float(u))

    def allow(self, host: str) -> bool:
        """Closed: yes. Open: no. Half-open: exactly one caller wins the probe."""
        v = self.view(host)
        if v.state == "closed":
            return True
        if v.state == "open":
            return False
        probe_key = self._key(host) + ":probe"
        ttl = max(int(self.rel.health_timeout_s * 5), 5)
        return bool(self.redis.set(probe_key, "1", nx=True, ex=ttl))

    def success(self, host: str) -> None:
        k = self._key(host)
        if self.redis.exists(k):
            self.redis.delete(k, k + ":probe")

    def failure(self, host: str, reason: str, *, hard_s: float | None = None) -> BreakerView:
        """Count a failure; open at the threshold (or at once, for ``hard_s`` seconds)."""
        k = self._key(host)
        pipe = self.redis.pipeline()
        pipe.hincrby(k, "failures", 1)
        pipe.hget(k, "open_until")
        failures, until = pipe.execute()
        now = time.time()
        opening = hard_s is not None or failures >= self.rel.breaker_failures
        already_open = bool(until) and now < float(until)
        if opening and not already_open:
            open_for = hard_s if hard_s is not None else self.rel.breaker_open_s
            self.redis.hset(k, mapping={"open_until": now + open_for, "reason": reason[:300]})
            self.redis.incr(keys.breaker_opened(self.config, host))
        self.redis.delete(k + ":probe")
        self.redis.expire(k, int(max(hard_s or 0, self.rel.breaker_open_s) * 20) + 60)
        return self.view(host)

    def times_opened(self, host: str) -> int:
        return int(self.redis.get(keys.breaker_opened(self.config, host)) or 0)


class HealthChecker:
    """Probes a host at most once per ``health_cache_s`` per process, and feeds the breaker."""

    def __init__(
        self,
        breaker: Breaker,
        backend_for: Callable[[str], Backend],
        config: FleetConfig,
    ) -> None:
        self.breaker = breaker
        self.backend_for = backend_for
        self.config = config
        self._cache: dict[str, tuple[float, HostHealth]] = {}

    def probe(self, host: str) -> HostHealth:
        hit = self._cache.get(host)
        now = time.monotonic()
        if hit and now - hit[0] < self.config.reliability.health_cache_s:
            return hit[1]
        try:
            health = self.backend_for(host).health()
        except Exception as exc:  # a probe must never take the worker down
            health = HostHealth(host=host, ok=False, detail=f"probe error: {exc}")
        self._cache[host] = (time.monotonic(), health)  # fresh from when the answer came
        return health

    def available(self, host: str) -> tuple[bool, str]:
        """May a job be sent to ``host`` now? Returns (yes/no, why)."""
        if not self.breaker.allow(host):
            v = self.breaker.view(host)
            return False, f"breaker open ({v.reason or 'failures'})"
        health = self.probe(host)
        if not health.ok and health.local_fault:
            # This worker's own key: the host stays usable for everyone else.
            return False, f"refused this worker's key: {health.detail}"
        if not health.ok:
            self.breaker.failure(host, f"health check failed: {health.detail}")
            return False, f"health check failed: {health.detail}"
        return True, "ok"

    def local_fault(self, host: str) -> bool:
        """Whether ``host``'s last probe here failed for this process's own reason (auth)."""
        hit = self._cache.get(host)
        return bool(hit and hit[1].local_fault)

    def forget(self, host: str) -> None:
        self._cache.pop(host, None)


def breaker_table(breaker: Breaker) -> list[dict[str, object]]:
    return [
        {
            "host": v.host,
            "state": v.state,
            "failures": v.failures,
            "open_for_s": round(max(v.open_until - time.time(), 0), 1) if v.state == "open" else 0,
            "reason": v.reason,
            "opened": breaker.times_opened(v.host),
        }
        for v in breaker.views()
    ]

