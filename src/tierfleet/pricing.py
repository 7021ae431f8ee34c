"""What one attempt costs, and what it would have cost on the baseline model.

Prices come from the config only, so a figure in a report can always be traced
back to a line of ``fleet.toml``:

- ``paid`` tiers bill tokens: ``tokens_in x input_per_mtok + tokens_out x
  output_per_mtok``, per million;
- ``rented`` tiers (Runpod) bill time: ``cost_per_second`` per started second
  (Runpod Serverless bills by the second), else ``cost_per_hour`` pro rata;
- ``local`` tiers cost their amortised ``cost_per_hour`` pro rata (default 0);
- ``rules`` cost nothing.

A missing price is a :class:`~tierfleet.errors.ConfigError`, never a silent $0.
Sums meant to be exact (the ledger's Redis counters, report totals) are kept in
integer nano-dollars: float sums drift, integer ones add up to the cent.
"""

from __future__ import annotations

import math

from .config import FleetConfig, HostConfig
from .errors import ConfigError
from .fleet import FleetView

__all__ = [
    "NANOS_PER_USD",
    "attempt_cost",
    "baseline_cost",
    "from_nanos",
    "host_for",
    "to_nanos",
    "token_cost",
]

NANOS_PER_USD = 1_000_000_000
_PER_MTOK = 1_000_000


def to_nanos(usd: float) -> int:
    return round(usd * NANOS_PER_USD)


def from_nanos(nanos: int) -> float:
    return nanos / NANOS_PER_USD


def _non_negative(**values: float) -> None:
    for name, v in values.items():
        if v < 0 or math.isnan(v):
            raise ValueError(f"{name} must be >= 0, got {v!r}")


def token_cost(config: FleetConfig, model: str, tokens_in: int, tokens_out: int) -> float:
    """Per-token price of ``model`` (USD), from its ``input_per_mtok``/``output_per_mtok``."""
    _non_negative(tokens_in=tokens_in, tokens_out=tokens_out)
    mc = config.models.get(model)
    if mc is None:
        raise ConfigError(f"models.{model}: no such model in the config, so no price")
    if mc.input_per_mtok is None or mc.output_per_mtok is None:
        raise ConfigError(f"models.{model}: no input_per_mtok/output_per_mtok price")
    return (tokens_in * mc.input_per_mtok + tokens_out * mc.output_per_mtok) / _PER_MTOK


def host_for(config: FleetConfig, tier: str, host: str | None, model: str | None) -> HostConfig | None:
    """The host an attempt ran on: the named one, else the tier's host serving ``model``."""
    if host is not None:
        hc = config.hosts.get(host)
        if hc is None:
            raise ConfigError(f"hosts.{host}: no such host in the config")
        return hc
    view = FleetView.of(config)
    serving = view.hosts(tier, model) or view.hosts(tier, None)
    return config.hosts[serving[0].name] if serving else None


def attempt_cost(
    config: FleetConfig,
    *,
    tier: str,
    host: str | None = None,
    model: str | None = None,
    tokens_in: int = 0,
    tokens_out: int = 0,
    seconds: float = 0.0,
) -> float:
    """USD one attempt cost at ``tier`` (see the module doc for each kind of place)."""
    _non_negative(tokens_in=tokens_in, tokens_out=tokens_out, seconds=seconds)
    tc = config.tiers.get(tier)
    if tc is None:
        raise ConfigError(f"tiers.{tier}: no such tier in the config")
    if tc.place == "rules":
        return 0.0
    if tc.place == "paid":
        if model is None:
            raise ConfigError(f"tiers.{tier}: a paid attempt must name its model to be priced")
        return token_cost(config, model, tokens_in, tokens_out)
    hc = host_for(config, tier, host, model)
    if hc is None:
        if tc.place == "rented":
            raise ConfigError(f"tiers.{tier}: rented tier has no host, so no price per second/hour")
        return 0.0
    if tc.place == "rented" and hc.cost_per_second is not None:
        return hc.cost_per_second * math.ceil(seconds)
    return hc.cost_per_hour * seconds / 3600.0


def baseline_cost(config: FleetConfig, tokens_in: int, tokens_out: int) -> float:
    """What these tokens would cost on the baseline model (0 when the fleet has no paid model)."""
    model = config.baseline_model()
    if model is None:
        return 0.0
    return token_cost(config, model, tokens_in, tokens_out)
