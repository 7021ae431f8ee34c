"""Offline judgement of a policy version on labelled fleet traffic it has not trained on.

Why: a candidate must not reach live traffic on faith. On held-out labels
(small and large scores per prompt) each version's p_small_ok is turned into
the decisions it would make, and measured by:

- ``cut``: the share of calls kept off the strong tier while quality stays at
  95% of always-strong quality (routing prompts to the strong tier in order of
  1 - p_small_ok): how well it *ranks*, whatever its threshold;
- ``quality``: the mean score of the answers it would have chosen at the
  fleet's threshold (``policy.p_small_ok_threshold``), relative to always-strong;
- ``small_share`` and the counterfactual ``spend_usd`` of those decisions
  (each prompt priced on the small tier that answered it or on the strong tier);
- ``kind_accuracy`` on the labels whose producer typed the job.

:func:`compare` is the promotion gate: quality within ``learning.tolerance`` of
the current version's (seed 004: under 5% drop) *and* a cut that does not fall by
more than that same share. Quality alone is not enough: a candidate that sends
everything to the strong tier keeps quality and throws the savings away (a router
trained on inverted labels did exactly that in the simulated month's test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..config import FleetConfig
from ..fleet import DEFAULT_OUT_TOKENS, FleetView
from .models import Models, Reader

TARGET = 0.95


@dataclass(frozen=True)
class EvalRow:
    prompt: str
    small: float  # the small tier's score, 0..1
    large: float  # the strong tier's score, 0..1
    tier: str = ""  # the small tier that answered
    kind: str | None = None  # the producer's kind, when it typed the job


@dataclass(frozen=True)
class Evaluation:
    n: int
    cut: float
    quality: float  # relative to always-strong quality
    small_share: float
    spend_usd: float
    strong_spend_usd: float
    kind_accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def cost_cut(need_large: np.ndarray, small: np.ndarray, large: np.ndarray,
             target: float = TARGET) -> float:
    """1 - the smallest share of strong calls, in order of ``need_large``, reaching
    ``target`` x always-strong quality (ties split pro rata: no order is invented)."""
    n = len(small)
    if n == 0:
        return 0.0
    goal = target * large.mean()
    quality = small.mean()
    if quality >= goal:
        return 1.0
    order = np.argsort(-need_large, kind="stable")
    keys, gain = need_large[order], (large - small)[order]
    sent, i = 0, 0
    while i < n:
        j = i
        while j < n and keys[j] == keys[i]:
            j += 1
        g = gain[i:j].sum() / n
        if quality + g >= goal:
            share = (sent + (goal - quality) / g * (j - i)) / n if g > 0 else sent / n
            return 1.0 - share
        quality += g
        sent, i = j, j
    return 0.0


def evaluate(models: Models, config: FleetConfig, rows: Sequence[EvalRow]) -> Evaluation:
    """What ``models`` would have done with ``rows``, measured as the module doc says."""
    if not rows:
        return Evaluation(0, 0.0, 0.0, 0.0, 0.0, 0.0, None)
    reader = Reader(config.policy.classifier, models)
    sig = reader.read_many([r.prompt for r in rows])
    p = np.array([s.p_small_ok for s in sig])
    small = np.array([r.small for r in rows])
    large = np.array([r.large for r in rows])
    go_small = p >= config.policy.p_small_ok_threshold
    chosen = np.where(go_small, small, large)
    strong_q = float(large.mean())
    fleet = FleetView.of(config)
    strong = config.learning.shadow.strong_tier
    strong_model = fleet.model_on(strong, "chat") if strong in config.tiers else None
    spend = strong_spend = 0.0
    for r, s, small_here in zip(rows, sig, go_small, strict=True):
        c_strong = fleet.cost(strong, strong_model, s.tokens_in, DEFAULT_OUT_TOKENS) if strong_model else 0.0
        strong_spend += c_strong
        if small_here and r.tier in config.tiers:
            spend += fleet.cost(r.tier, fleet.model_on(r.tier, "chat"), s.tokens_in, DEFAULT_OUT_TOKENS)
        else:
            spend += c_strong
    typed = [(r.kind, s.guess.kind.value) for r, s in zip(rows, sig, strict=True) if r.kind]
    acc = sum(a == b for a, b in typed) / len(typed) if typed else None
    return Evaluation(
        n=len(rows), cut=cost_cut(1.0 - p, small, large),
        quality=float(chosen.mean()) / strong_q if strong_q > 0 else 1.0,
        small_share=float(go_small.mean()), spend_usd=spend, strong_spend_usd=strong_spend,
        kind_accuracy=acc,
    )


def compare(candidate: Evaluation, current: Evaluation, tolerance: float) -> tuple[bool, list[str]]:
    """The gate: promote only if the candidate's quality drops less than ``tolerance``."""
    reasons = [
        f"quality {current.quality:.3f} -> {candidate.quality:.3f} of always-strong",
        f"cut at 95% {current.cut:.3f} -> {candidate.cut:.3f}",
        f"counterfactual spend ${current.spend_usd:.4f} -> ${candidate.spend_usd:.4f}",
    ]
    if candidate.n == 0:
        return False, ["no held-out labels to judge the candidate on"]
    drop = 1.0 - candidate.quality / current.quality if current.quality > 0 else 0.0
    cut_loss = 1.0 - candidate.cut / current.cut if current.cut > 0 else 0.0
    if drop >= tolerance:
        reasons.insert(0, f"quality drop {drop:.1%} >= {tolerance:.0%}: refused")
        return False, reasons
    if cut_loss > tolerance:
        reasons.insert(0, f"cut at 95% falls {cut_loss:.0%} (> {tolerance:.0%}): refused, "
                          "it would spend the savings")
        return False, reasons
    reasons.insert(0, f"quality drop {drop:.1%} < {tolerance:.0%}, cut kept: may be promoted")
    return True, reasons
