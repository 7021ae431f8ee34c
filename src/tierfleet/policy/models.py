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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from .. import tokens
from ..errors import ConfigError
from ..jobs import Kind
from .correction import CORRECTION_FILE, LabelCorrection
from .features import DENSE_NAMES, dense
from .keywords import KeywordClassifier, KindGuess, cue_hits
from .linear import LinearModel
from .text import read_doc

log = logging.getLogger(__name__)

ARTIFACTS_ENV = "TIERFLEET_POLICY_ARTIFACTS"
CHUNK = 512  # texts read per pass in a batch
KIND_FILE = "kind.npz"
SMALL_OK_FILE = "small_ok.npz"
META_FILE = "meta.json"
_LOG_TOKENS = DENSE_NAMES.index("log_tokens")  # the label correction's length input


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
    # Fitted on the user's labelled traffic by `tierfleet train --labels FILE --with-dev`.
    correction: LabelCorrection | None = None


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
    if kind is not None and small is not None and kind.vocab.terms == small.vocab.terms:
        small.vocab = kind.vocab  # one vocabulary: each prompt is encoded once
    meta: dict[str, Any] = {}
    if (path / META_FILE).exists():
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path / META_FILE}: {exc}")
    if kind is not None and set(kind.classes) - {k.value for k in Kind}:
        problems.append(f"{path / KIND_FILE}: unknown kinds {sorted(kind.classes)}")
        kind = None
    correction = None
    if (path / CORRECTION_FILE).exists() and small is not None:
        try:
            correction = LabelCorrection.load(path / CORRECTION_FILE)
        except ConfigError as exc:
            problems.append(str(exc))
        if correction is not None and correction.n_terms != len(small.vocab):
            problems.append(f"{path / CORRECTION_FILE}: fitted on another p_small_ok model; ignored")
            correction = None
    for p in problems:
        log.warning("policy artifacts: %s", p)
    return Models(kind, small, meta, tuple(problems), str(path), correction)


def prior_small_ok(n_tokens: int) -> float:
    """Used only without a trained model: longer prompts are less often easy."""
    return float(min(0.95, max(0.05, 0.95 - 0.06 * math.log2(1 + n_tokens / 64))))


@dataclass(frozen=True)
class Signals:
    """What the text of one job says, read before any stage runs."""

    tokens_in: int
    guess: KindGuess
    p_small_ok: float
    p_method: str  # "learned", "learned + labels" (a label correction) or "length prior"
    cues: int = 0  # keyword cues of any kind found in the text
    # The kinds p_small_ok was trained on (None: unknown, or every kind): for any other
    # kind the estimate is an extrapolation, and the kind stage does not act on it.
    p_kinds: frozenset[str] | None = None


class Reader:
    """Counts tokens, classifies and estimates p_small_ok for many texts in one pass."""

    def __init__(self, classifier: str = "learned", models: Models | None = None) -> None:
        self.models = models if models is not None else load_models()
        self.keyword = KeywordClassifier()
        self.use_learned = classifier == "learned" and self.models.kind is not None
        kind, small = self.models.kind, self.models.small_ok
        # Both models on one vocabulary: one gather of a (terms x 9) block scores
        # a prompt for kind and p_small_ok at once (the single-decision fast path).
        self._joint: np.ndarray | None = None
        if self.use_learned and kind is not None and small is not None and small.vocab is kind.vocab:
            self._joint = np.ascontiguousarray(np.hstack([kind.term_coef, small.term_coef]))
        self._kinds = [Kind(c) for c in kind.classes] if kind is not None else []
        trained = (self.models.meta.get("small_ok") or {}).get("kinds")
        self._p_kinds = frozenset(trained) if isinstance(trained, list) and trained else None

    def read_many(self, texts: list[str], counts: Sequence[int | None] | None = None) -> list[Signals]:
        """Signals of every text, in order; read in chunks so memory stays flat.

        ``counts``: token counts the caller already has (None: count here).
        """
        out: list[Signals] = []
        for i in range(0, len(texts), CHUNK):
            out.extend(self._read_chunk(texts[i : i + CHUNK],
                                        counts[i : i + CHUNK] if counts is not None else None))
        return out

    def _read_chunk(self, texts: list[str], given: Sequence[int | None] | None = None) -> list[Signals]:
        if not texts:
            return []
        # One call per text: tiktoken's encode_batch (tokens.count_many) runs a thread
        # pool that was twice as slow as this loop on a busy 2-CPU machine.
        counts = [tokens.count(t) if given is None or given[i] is None else int(given[i] or 0)
                  for i, t in enumerate(texts)]
        docs = [read_doc(t) for t in texts]
        hits = [cue_hits(d) for d in docs]
        feats = np.array([dense(d, n, h) for d, n, h in zip(docs, counts, hits, strict=True)])
        terms = [d.terms for d in docs]
        kind, small = self.models.kind if self.use_learned else None, self.models.small_ok
        encoded = None
        if kind is not None:
            encoded = kind.encode(terms)
            guesses = self._learned(kind, terms, feats, encoded)
        else:
            guesses = [self.keyword.from_hits(h) for h in hits]
        if small is not None:
            shared = encoded if kind is not None and small.vocab is kind.vocab else None
            corr = self.models.correction
            if corr is not None and shared is None:
                shared = small.encode(terms)
            z = small.decision(terms, feats, shared)
            if corr is not None and shared is not None:
                ps = [corr.adjust(float(zi), float(f[_LOG_TOKENS]), idx, w)
                      for zi, f, (idx, w) in zip(z[:, 0], feats, shared, strict=True)]
                method = "learned + labels"
            else:
                ps = [float(x) for x in small.proba(z)[:, 1]]
                method = "learned"
        else:
            ps = [prior_small_ok(n) for n in counts]
            method = "length prior"
        return [
            Signals(n, g, min(1.0, max(0.0, q)), method, sum(h), self._p_kinds)
            for n, g, q, h in zip(counts, guesses, ps, hits, strict=True)
        ]

    def read(self, text: str, n_tokens: int | None = None) -> Signals:
        """Signals of one text (``n_tokens``: its token count if the caller has it)."""
        kind, small, joint = self.models.kind, self.models.small_ok, self._joint
        if joint is None or kind is None or small is None:
            return self.read_many([text], [n_tokens])[0]
        n = tokens.count(text) if n_tokens is None else n_tokens
        doc = read_doc(text)
        hits = cue_hits(doc)
        feats = np.array([dense(doc, n, hits)])
        idx, w = kind.vocab.encode(doc.terms)
        z = w @ joint[idx] if idx.size else np.zeros(joint.shape[1])
        k = kind.term_coef.shape[1]
        pk = kind.proba(z[None, :k] + kind.dense_part(feats))[0]
        order = np.argsort(-pk)
        kinds = self._kinds
        guess = KindGuess(kinds[order[0]], float(pk[order[0]]), "learned", kinds[order[1]])
        zs = z[None, k:] + small.dense_part(feats)
        corr = self.models.correction
        if corr is not None:
            p, method = corr.adjust(float(zs[0, 0]), float(feats[0, _LOG_TOKENS]), idx, w), "learned + labels"
        else:
            p, method = float(small.proba(zs)[0, 1]), "learned"
        return Signals(n, guess, min(1.0, max(0.0, p)), method, sum(hits), self._p_kinds)


    @staticmethod
    def _learned(
        model: LinearModel,
        terms: Sequence[Mapping[str, int]],
        feats: np.ndarray,
        encoded: list[tuple[np.ndarray, np.ndarray]],
    ) -> list[KindGuess]:
        proba = model.predict_proba(terms, feats, encoded)
        order = np.argsort(-proba, axis=1)
        kinds = [Kind(c) for c in model.classes]
        return [
            KindGuess(kinds[row[0]], float(p[row[0]]), "learned", kinds[row[1]])
            for p, row in zip(proba, order, strict=True)
        ]
