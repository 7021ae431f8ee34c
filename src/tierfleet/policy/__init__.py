"""Routing policy: ordered stages that decide, narrow or pass, each saying why.

``Policy(config).route(job, state)`` returns a ``Route``; ``route_many`` does a
batch with one tokenizer and model pass. The policy is pure: it reads a
``FleetState`` snapshot handed in by the dispatcher and never touches Redis.
"""

from __future__ import annotations

from .engine import Policy, build_policy
from .keywords import KeywordClassifier, KindGuess
from .models import Models, Reader, Signals, load_models
from .stages import DEFAULT_STAGES, Draft, Stage
from .state import FleetState

__all__ = [
    "DEFAULT_STAGES",
    "Draft",
    "FleetState",
    "KeywordClassifier",
    "KindGuess",
    "Models",
    "Policy",
    "Reader",
    "Signals",
    "Stage",
    "build_policy",
    "load_models",
]
