"""Routing policy. (Minimal placeholder: kind -> configured tier; the staged policy replaces it.)"""

from __future__ import annotations

from ..config import FleetConfig
from ..jobs import RULES_KINDS, Job, Kind, Reason, Route
from .state import FleetState

__all__ = ["FleetState", "Policy", "build_policy"]


class Policy:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config

    def route(self, job: Job, state: FleetState | None = None) -> Route:
        cfg = self.config
        if job.kind in RULES_KINDS:
            return Route(tier="rules", kind=job.kind, reasons=[Reason(stage="rules", text="rules kind")])
        kind = Kind.CHAT if job.kind is Kind.AUTO else job.kind
        tier = job.tier or cfg.policy.kind_tiers.get(kind.value, "paid")
        tc = cfg.tiers[tier]
        model = job.model or tc.model_for(kind.value)
        host = next(iter(cfg.hosts_for(tier)), None)
        return Route(
            tier=tier,
            kind=kind,
            model=model,
            host=host,
            fallbacks=list(tc.fallback),
            reasons=[Reason(stage="kind", text=f"{kind.value} -> {tier}")],
        )


def build_policy(config: FleetConfig) -> Policy:
    return Policy(config)
