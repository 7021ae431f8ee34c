"""A read-only view of the fleet config that answers every "where can this go?" question.

The policy (routing), the runner (fallback and escalation), pricing and the
reports all ask the same questions: which hosts of tier T serve model M, the
largest window a tier offers, whether a tier can read images, which tiers rank
above this one, which tiers a job may move to next. They are answered here,
once, so the worker cannot escalate to a tier the policy would never route to.

"Above" follows the *ladder*, weakest to strongest, built from the policy's
``spill_order``, never from the order of ``[tiers]`` in the file.

Pure: it reads the config only (no Redis, no Celery, no clock), and the config
is fixed for a process's life, so answers are memoised.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from .config import FleetConfig

# Output tokens assumed for a cost estimate when the job sets no max_tokens.
DEFAULT_OUT_TOKENS = 512
# Rough generation speed of a rented GPU, to turn a per-second price into a per-job one.
RENTED_TOKENS_PER_S = 40.0
RENTED_PREFILL_TOKENS_PER_S = 2000.0


_VIEWS: dict[int, tuple[weakref.ref[FleetConfig], FleetView]] = {}


@dataclass(frozen=True)
class HostFit:
    name: str
    window: int


class FleetView:
    """Fleet facts derived from one :class:`~tierfleet.config.FleetConfig`; see the module doc."""

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

    def model_for(self, tier: str, kind: str) -> str | None:
        return self.config.tiers[tier].model_for(kind)

    @classmethod
    def of(cls, config: FleetConfig) -> FleetView:
        """The view of ``config``, built once per config object (pricing asks per attempt)."""
        entry = _VIEWS.get(id(config))
        if entry is not None and entry[0]() is config:
            return entry[1]
        view = cls(config)
        # Drop views of configs gone since (tests build many); a process has one or two.
        for k in [k for k, (ref, _) in _VIEWS.items() if ref() is None]:
            del _VIEWS[k]
        _VIEWS[id(config)] = (weakref.ref(config), view)
        return view

    def model_on(self, tier: str, kind: str, wanted: str | None = None) -> str | None:
        """``wanted`` when a host of ``tier`` serves it, else the tier's model for ``kind``."""
        if wanted and self.serves(tier, wanted):
            return wanted
        return self.model_for(tier, kind)

    def serves(self, tier: str, model: str) -> bool:
        return any(model in h.models for h in self._hosts[tier].values())

    def tiers_serving(self, model: str) -> list[str]:
        return [t for t in self.tiers if self.serves(t, model)]

    def is_vision(self, tier: str) -> bool:
        m = self.model_for(tier, "vision")
        mc = self.config.models.get(m) if m else None
        return bool(mc and mc.vision)

    def hosts(self, tier: str, model: str | None) -> list[HostFit]:
        """Hosts of ``tier`` that serve ``model`` (any host when no model), config order.

        A host that lists no models is taken to serve whatever its tier asks for.
        """
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

    def largest_window(self, tier: str) -> int:
        """The largest window any host of ``tier`` offers, whatever the model."""
        return self.window(tier, None)

    def fits(self, tier: str, model: str | None, need: int) -> bool:
        if self.place[tier] == "rules":
            return True
        return self.window(tier, model) >= need

    def above(self, tier: str) -> list[str]:
        """Model tiers stronger than ``tier``, nearest first (ladder order)."""
        r = self.rank.get(tier)
        return [] if r is None else self.ladder[r + 1:]

    def allowed_next(self, candidates: Iterable[str], privacy: str, kind: str,
                     exclude: Iterable[str] = ()) -> list[str]:
        """The ``candidates`` a job may move to, in the order given: configured model
        tiers its privacy allows, able to read images for a vision job, not in ``exclude``."""
        seen = set(exclude)
        return [
            t for t in candidates
            if t not in seen
            and t in self.place
            and self.place[t] != "rules"
            and self.config.tier_allowed(t, privacy)
            and (kind != "vision" or self.is_vision(t))
        ]

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
