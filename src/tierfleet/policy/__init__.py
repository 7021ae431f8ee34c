"""Routing policy: ordered stages that decide, narrow or pass, each saying why.

``Policy(config).route(job, state)`` returns a ``Route``; ``route_many`` does a
batch with one tokenizer and model pass. The policy is pure: it reads a
``FleetState`` snapshot handed in by the dispatcher and never touches Redis.
"""

from __future__ import annotations

from .correction import LabelCorrection
from .engine import Policy, build_policy
from .keywords import KeywordClassifier, KindGuess
from .memory import BadAnswerMemory, MemoryStore
from .models import Models, Reader, Signals, load_models
from .stages import DEFAULT_STAGES, Draft, SimilarBadAnswer, Stage, with_memory
from .state import FleetState

__all__ = [
    "DEFAULT_STAGES",
    "BadAnswerMemory",
    "Draft",
    "FleetState",
    "KeywordClassifier",
    "KindGuess",
    "LabelCorrection",
    "MemoryStore",
    "Models",
    "Policy",
    "Reader",
    "Signals",
    "SimilarBadAnswer",
    "Stage",
    "build_policy",
    "load_models",
    "with_memory",
]
