"""A read-only view of the config shaped for routing questions, built once per policy."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import FleetConfig

# Output tokens assumed for a cost estimate when the job sets no max_tokens.
DEFAULT_OUT_TOKENS = 512
# Rough generation speed of a rented GPU, to turn a per-second price into a per-job one.
RENTED_TOKENS_PER_S = 40.0
RENTED_PREFILL_TOKENS_PER_S = 2000.0


@dataclass(frozen=True)
class HostFit:
    name: str
    window: int


class FleetView:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.tiers = list(config.tiers)
        self.place = {n: t.place for n, t in config.tiers.items()}
        self.local = [n for n in self.tiers if self.place[n] in ("local", "rules")]
        self.rules_tier = next((n for n in self.tiers if self.place[n] == "rules"), None)
        spill = [t for t in config.policy.spill_order if t in config.tiers]
        model_tiers = [n for n in self.tiers if self.place[n] != "rules"]
        # Weakest to strongest: local tiers outside the spill order (the small
        # boxes), then the spill order (bigger local, rented, paid), then the rest.
        self.ladder = (
            [t for t in model_tiers if self.place[t] == "local" and t not in spill]
            + spill
            + [t for t in model_tiers if t not in spill and self.place[t] != "local"]
        )
        self.rank = {t: i for i, t in enumerate(self.ladder)}
        chat_tier = config.policy.kind_tiers.get("chat")
        self.small_tier = (
            chat_tier
            if chat_tier in self.place and self.place[chat_tier] == "local"
            else next(iter(self.ladder), None)
        )
        self.spill = spill
        self._hosts = {t: config.hosts_for(t) for t in self.tiers}
        # The config is fixed for the policy's life: answers are memoised.
        self._host_cache: dict[tuple[str, str | None], list[HostFit]] = {}

    # -- models and hosts ---------------------------------------------------------

    def model_for(self, tier: str, kind: str) -> str | None:
        return self.config.tiers[tier].model_for(kind)

    def serves(self, tier: str, model: str) -> bool:
        return any(model in h.models for h in self._hosts[tier].values())

    def tiers_serving(self, model: str) -> list[str]:
        return [t for t in self.tiers if self.serves(t, model)]

    def is_vision(self, tier: str) -> bool:
        m = self.model_for(tier, "vision")
        mc = self.config.models.get(m) if m else None
        return bool(mc and mc.vision)

    def hosts(self, tier: str, model: str | None) -> list[HostFit]:
        """Hosts of ``tier`` that serve ``model`` (any host when no model), config order."""
        key = (tier, model)
        hit = self._host_cache.get(key)
        if hit is None:
            hit = self._host_cache[key] = self._find_hosts(tier, model)
        return hit

    def _find_hosts(self, tier: str, model: str | None) -> list[HostFit]:
        out = []
        for name, h in self._hosts[tier].items():
            if model is None or model in h.models or not h.models:
                out.append(HostFit(name, self.config.context_window(name, model)))
        return out

    def window(self, tier: str, model: str | None) -> int:
        """The largest context window a host of ``tier`` offers for ``model`` (0: no host)."""
        return max((h.window for h in self.hosts(tier, model)), default=0)

    def fits(self, tier: str, model: str | None, need: int) -> bool:
        if self.place[tier] == "rules":
            return True
        return self.window(tier, model) >= need

    # -- cost ---------------------------------------------------------------------

    def cost(self, tier: str, model: str | None, tokens_in: int, tokens_out: int) -> float:
        """Estimated US$ of one attempt: token prices, or time on a rented GPU."""
        place = self.place[tier]
        if place in ("rules", "local"):
            return 0.0  # our hardware: no marginal cost per job
        mc = self.config.models.get(model) if model else None
        if mc and mc.input_per_mtok is not None and mc.output_per_mtok is not None and (
            place == "paid" or mc.input_per_mtok or mc.output_per_mtok
        ):
            return (tokens_in * mc.input_per_mtok + tokens_out * mc.output_per_mtok) / 1e6
        if place == "rented":
            rates = [
                h.cost_per_second if h.cost_per_second is not None else h.cost_per_hour / 3600.0
                for h in self._hosts[tier].values()
            ]
            seconds = tokens_out / RENTED_TOKENS_PER_S + tokens_in / RENTED_PREFILL_TOKENS_PER_S
            return max(rates, default=0.0) * seconds
        return 0.0
