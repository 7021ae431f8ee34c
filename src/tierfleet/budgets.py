"""Budgets that fail closed: a rented or paid call first reserves its estimate.

Every worker shares the same books in Redis, so the check and the hold are one
Lua script (no two workers can both take the last dollar). The actual cost is
added to ``spent`` in the same transaction as the call's ledger record (the
runner's ``also`` hook), and the hold is dropped after the call; between the two
both count, so a budget errs on the closed side. A hold carries a deadline: a
worker that dies holding one stops blocking the budget after it.

Keys (``P`` = key prefix):

- ``P:budget:conf``: hash, budget name -> JSON of a run-time override (``tierfleet budget set``);
- ``P:budget:{name}:{period}``: hash, ``spent`` (nano-USD) and ``r:{hold id}`` = ``nanos|deadline``;
  ``period`` is ``YYYY-MM-DD`` or ``YYYY-MM`` (UTC), so a new period starts from zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from . import keys
from .config import BudgetConfig, FleetConfig
from .policy.state import BudgetLeft, scope_matches
from .pricing import from_nanos, to_nanos

__all__ = ["BudgetBook", "BudgetStatus", "Hold", "Refusal", "period_end", "period_id"]

# KEYS: the budgets' period hashes. ARGV: hold field, nanos, now, deadline, then per key
# its limit (nanos) and TTL (s). Returns {0} when held, else {i, spent, held} of the first
# budget that cannot take it. Expired holds (a dead worker's) are dropped on the way.
_RESERVE = """
local field, amount, now, deadline = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n = #KEYS
for i = 1, n do
  local limit = tonumber(ARGV[4 + i])
  local flat = redis.call('HGETALL', KEYS[i])
  local spent, held = 0, 0
  for j = 1, #flat, 2 do
    local k, v = flat[j], flat[j + 1]
    if k == 'spent' then
      spent = tonumber(v)
    elseif string.sub(k, 1, 2) == 'r:' and k ~= field then
      local sep = string.find(v, '|', 1, true)
      if tonumber(string.sub(v, sep + 1)) < now then
        redis.call('HDEL', KEYS[i], k)
      else
        held = held + tonumber(string.sub(v, 1, sep - 1))
      end
    end
  end
  if spent + held + amount > limit then
    return {i, spent, held}
  end
end
for i = 1, n do
  redis.call('HSET', KEYS[i], field, ARGV[2] .. '|' .. deadline)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4 + n + i]))
end
return {0}
"""


def period_id(period: str, ts: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%d") if period == "day" else dt.strftime("%Y-%m")


def period_end(period: str, ts: float) -> float:
    """When the period holding ``ts`` ends (the next UTC midnight or first of the month)."""
    dt = datetime.fromtimestamp(ts, UTC)
    start = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start.timestamp() + 86400
    year, month = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Hold:
    """A reservation on every budget that covers one call; dropped by :meth:`BudgetBook.release`."""

    field: str
    keys: tuple[str, ...]
    nanos: int


@dataclass(frozen=True)
class Refusal:
    """The first budget that could not take a call's estimate, and why."""

    name: str
    budget: BudgetConfig
    spent_usd: float
    held_usd: float
    need_usd: float
    resets_at: float

    @property
    def reason(self) -> str:
        b = self.budget
        return (f"budget {self.name} ({b.scope}, ${b.limit_usd:g} per {b.period}) exhausted: "
                f"${self.spent_usd:.4f} spent + ${self.held_usd:.4f} held, this call needs "
                f"~${self.need_usd:.4f}; resets "
                f"{datetime.fromtimestamp(self.resets_at, UTC):%Y-%m-%d %H:%M}Z")


@dataclass(frozen=True)
class BudgetStatus:
    name: str
    scope: str
    period: str
    limit_usd: float
    spent_usd: float
    held_usd: float
    on_exhausted: str
    alerts: tuple[float, ...]

    @property
    def used(self) -> float:
        return (self.spent_usd / self.limit_usd) if self.limit_usd else (1.0 if self.spent_usd else 0.0)

    @property
    def crossed(self) -> float | None:
        """The highest alert threshold the spend has reached, if any."""
        hit = [a for a in self.alerts if self.used >= a]
        return max(hit) if hit else None


class BudgetBook:
    """The fleet's budgets in Redis: reserve before a call, spend with its record, release after."""

    def __init__(self, client: redis.Redis, config: FleetConfig) -> None:
        self.redis = client
        self.config = config
        self.conf_key = keys.key(config, "budget", "conf")
        self._reserve = client.register_script(_RESERVE)

    def _key(self, name: str, period: str, ts: float) -> str:
        return keys.key(self.config, "budget", name, period_id(period, ts))

    def effective(self) -> dict[str, BudgetConfig]:
        """The config's budgets with the run-time overrides on top (read on every call, so a
        ``budget set`` takes effect on every worker at once)."""
        out = dict(self.config.budgets)
        for name, raw in (self.redis.hgetall(self.conf_key) or {}).items():
            n = name.decode() if isinstance(name, bytes) else name
            out[n] = BudgetConfig.model_validate_json(raw)
        return out

    def set(self, name: str, **changes: Any) -> BudgetConfig:
        """Create or change a budget at run time; fields left out keep their current value."""
        current = self.effective().get(name)
        base = current.model_dump() if current else {}
        budget = BudgetConfig.model_validate({**base, **{k: v for k, v in changes.items() if v is not None}})
        self.redis.hset(self.conf_key, name, budget.model_dump_json())
        return budget

    def covering(self, job: Any) -> list[tuple[str, BudgetConfig]]:
        return [(n, b) for n, b in sorted(self.effective().items()) if scope_matches(b.scope, job)]

    def reserve(self, job: Any, amount_usd: float, hold_id: str, *, hold_s: float,
                now: float | None = None) -> Hold | Refusal | None:
        """Hold ``amount_usd`` on every budget covering ``job``, all or none (None: no budget covers it)."""
        now = time.time() if now is None else now
        budgets = self.covering(job)
        if not budgets:
            return None
        ks = [self._key(n, b.period, now) for n, b in budgets]
        ttls = [int(period_end(b.period, now) - now) + 86400 for _, b in budgets]
        nanos = max(to_nanos(amount_usd), 1)  # even a free-looking call must find room
        field = f"r:{hold_id}"
        out = self._reserve(keys=ks, args=[field, nanos, now, now + hold_s,
                                           *[to_nanos(b.limit_usd) for _, b in budgets], *ttls])
        i = int(out[0])
        if i == 0:
            return Hold(field, tuple(ks), nanos)
        name, b = budgets[i - 1]
        return Refusal(name, b, from_nanos(int(out[1])), from_nanos(int(out[2])), amount_usd,
                       period_end(b.period, now))

    def spend(self, pipe: Any, hold: Hold, cost_usd: float) -> None:
        """Queue the call's actual cost on the hold's budgets (inside the ledger's transaction)."""
        n = to_nanos(cost_usd)
        if n:
            for k in hold.keys:
                pipe.hincrby(k, "spent", n)

    def release(self, hold: Hold) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for k in hold.keys:
            pipe.hdel(k, hold.field)
        pipe.execute()

    def status(self, now: float | None = None) -> list[BudgetStatus]:
        now = time.time() if now is None else now
        out = []
        for name, b in sorted(self.effective().items()):
            raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                   for k, v in (self.redis.hgetall(self._key(name, b.period, now)) or {}).items()}
            held = sum(int(v.split("|")[0]) for k, v in raw.items()
                       if k.startswith("r:") and float(v.split("|")[1]) >= now)
            spent = from_nanos(int(raw.get("spent", 0)))
            out.append(BudgetStatus(name, b.scope, b.period, b.limit_usd, spent, from_nanos(held),
                                    b.on_exhausted, tuple(b.alerts)))
        return out

    def left(self, now: float | None = None) -> tuple[BudgetLeft, ...]:
        """Every budget's room now, for the dispatcher's :class:`~tierfleet.policy.state.FleetState`."""
        return tuple(BudgetLeft(s.name, s.scope, max(s.limit_usd - s.spent_usd - s.held_usd, 0.0),
                                s.on_exhausted) for s in self.status(now))

    def alerts(self, now: float | None = None) -> list[tuple[str, float, str]]:
        """(budget, threshold, text) for each budget past one of its alert thresholds."""
        out = []
        for s in self.status(now):
            t = s.crossed
            if t is not None:
                out.append((s.name, t, f"budget {s.name} ({s.scope}) at {s.used:.0%} of "
                                       f"${s.limit_usd:g} per {s.period} (alert at {t:.0%})"))
        return out
