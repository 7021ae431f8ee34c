"""The trained models the policy reads, and the one pass that turns texts into signals.

Artifacts ship in ``policy/artifacts/`` (``kind.npz``, ``small_ok.npz``,
``meta.json``); ``TIERFLEET_POLICY_ARTIFACTS`` points at another folder, e.g. one
written by ``tierfleet train --out``. They are read once per process and folder.
If they are missing or unreadable the policy still routes: the keyword classifier
and a length prior stand in, and every route says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from .. import tokens
from ..errors import ConfigError
from ..jobs import Kind
from .features import analyze, dense, normalize_prompt
from .keywords import KeywordClassifier, KindGuess
from .linear import LinearModel

log = logging.getLogger(__name__)

ARTIFACTS_ENV = "TIERFLEET_POLICY_ARTIFACTS"
KIND_FILE = "kind.npz"
SMALL_OK_FILE = "small_ok.npz"
META_FILE = "meta.json"


def shipped_dir() -> Path:
    return Path(str(files("tierfleet.policy").joinpath("artifacts")))


def artifacts_dir() -> Path:
    env = os.environ.get(ARTIFACTS_ENV)
    return Path(env) if env else shipped_dir()


@dataclass(frozen=True)
class Models:
    kind: LinearModel | None
    small_ok: LinearModel | None
    meta: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    where: str = ""


@cache
def load_models(folder: str | None = None) -> Models:
    """Read the artifacts of ``folder`` (default: ``artifacts_dir()``), once per process."""
    path = Path(folder) if folder else artifacts_dir()
    problems: list[str] = []

    def _one(name: str) -> LinearModel | None:
        f = path / name
        if not f.exists():
            problems.append(f"{f} missing")
            return None
        try:
            return LinearModel.load(f)
        except ConfigError as exc:
            problems.append(str(exc))
            return None

    kind = _one(KIND_FILE)
    small = _one(SMALL_OK_FILE)
    meta: dict[str, Any] = {}
    if (path / META_FILE).exists():
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path / META_FILE}: {exc}")
    if kind is not None and set(kind.classes) - {k.value for k in Kind}:
        problems.append(f"{path / KIND_FILE}: unknown kinds {sorted(kind.classes)}")
        kind = None
    for p in problems:
        log.warning("policy artifacts: %s", p)
    return Models(kind, small, meta, tuple(problems), str(path))


def prior_small_ok(n_tokens: int) -> float:
    """Used only without a trained model: longer prompts are less often easy."""
    return float(min(0.95, max(0.05, 0.95 - 0.06 * math.log2(1 + n_tokens / 64))))


@dataclass(frozen=True)
class Signals:
    """What the text of one job says, read before any stage runs."""

    tokens_in: int
    guess: KindGuess
    p_small_ok: float
    p_method: str  # "learned" or "length prior"


class Reader:
    """Counts tokens, classifies and estimates p_small_ok for many texts in one pass."""

    def __init__(self, classifier: str = "learned", models: Models | None = None) -> None:
        self.models = models if models is not None else load_models()
        self.keyword = KeywordClassifier()
        self.use_learned = classifier == "learned" and self.models.kind is not None

    def read_many(self, texts: list[str]) -> list[Signals]:
        if not texts:
            return []
        counts = tokens.count_many(texts)
        norm = [normalize_prompt(t) for t in texts]
        need_terms = self.use_learned or self.models.small_ok is not None
        terms = [analyze(t) for t in norm] if need_terms else []
        feats = np.array([dense(t, n) for t, n in zip(norm, counts, strict=True)])
        if self.use_learned and self.models.kind is not None:
            guesses = self._learned(self.models.kind, terms, feats)
        else:
            guesses = self.keyword.classify_many(norm)
        if self.models.small_ok is not None:
            p = self.models.small_ok.predict_proba(terms, feats)[:, 1]
            ps = [float(x) for x in p]
            method = "learned"
        else:
            ps = [prior_small_ok(n) for n in counts]
            method = "length prior"
        return [
            Signals(n, g, min(1.0, max(0.0, q)), method)
            for n, g, q in zip(counts, guesses, ps, strict=True)
        ]

    def read(self, text: str) -> Signals:
        return self.read_many([text])[0]

    @staticmethod
    def _learned(model: LinearModel, terms: list[list[str]], feats: np.ndarray) -> list[KindGuess]:
        proba = model.predict_proba(terms, feats)
        order = np.argsort(-proba, axis=1)
        kinds = [Kind(c) for c in model.classes]
        return [
            KindGuess(kinds[row[0]], float(p[row[0]]), "learned", kinds[row[1]])
            for p, row in zip(proba, order, strict=True)
        ]
