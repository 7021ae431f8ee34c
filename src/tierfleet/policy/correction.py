"""A correction of p_small_ok learned from a user's own labelled traffic.

Why: a model trained on public benchmarks ranks prompts of a new domain barely
better than chance (the leave-one-benchmark-out table in ``bench/routing.py``
shows it), while a few labels from the traffic the router will serve carry what
the public data cannot: how hard *this* domain's prompts are, which way prompt
length points in it, and which kinds of its prompts the small model fails. A
handful of labels is too few to retrain twenty thousand term weights, so they
fit two small things on top of the general model instead:

- a recalibration, a logistic model of the label on (general score, prompt
  length): the domain's own level and its own length direction, pulled towards
  the general model's ranking (``RECAL_PRIOR``) so that few labels move it little;
- a nearest-neighbour residual: the mean (label - recalibrated p) of the
  ``K`` most similar labelled prompts that are close (tf-idf cosine over
  the model's vocabulary at least ``MIN_SIMILARITY``), shrunk, so prompts like
  ones the small model failed move down.

At routing time this is numpy only: an inverted index from term to labelled
prompts gathers the similarities in one pass (microseconds), and the artifact
(``labels.npz``) holds numbers and strings only: plain arrays, never code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError

CORRECTION_FILE = "labels.npz"
FORMAT_VERSION = 1
K = 5
# Only close neighbours lend their residual, shrunk by how much similarity backs
# it. Measured over 30 draws of 5% labels per held-out benchmark: the residuals of
# merely related prompts (cosine 0.3-0.5), taken whole, are noise larger than the
# spread of p_small_ok within a benchmark and cost 1.5-2.5 points of cut; from 0.6
# and shrunk, about one point on templated sets, while labels that agree on a
# topic still move its prompts.
MIN_SIMILARITY = 0.6
NEIGHBOUR_PRIOR = 1.0  # similarity mass a residual needs to count half
RECAL_PRIOR = 1.0  # weight of the pull towards the general model's own scores


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


class LabelCorrection:
    """Recalibration plus neighbour residuals over one model's vocabulary."""

    def __init__(
        self,
        coef: np.ndarray,  # (a, b, c): p = sigmoid(a * z + b * (log_tokens - lt_mean) + c)
        lt_mean: float,
        n_terms: int,
        term_ptr: np.ndarray,  # (n_terms + 1,) into label_ids / label_w, one run per term
        label_ids: np.ndarray,
        label_w: np.ndarray,
        resid: np.ndarray,  # per labelled prompt: label - recalibrated p
        k: int = K,
    ) -> None:
        self.coef = np.asarray(coef, dtype=np.float64)
        self.lt_mean = float(lt_mean)
        self.n_terms = int(n_terms)
        self.term_ptr = np.asarray(term_ptr, dtype=np.int64)
        self.label_ids = np.asarray(label_ids, dtype=np.int64)
        self.label_w = np.asarray(label_w, dtype=np.float64)
        self.resid = np.asarray(resid, dtype=np.float64)
        self.k = int(k)

    @property
    def n_labels(self) -> int:
        return int(self.resid.size)

    # -- routing time -------------------------------------------------------------------

    def recalibrated(self, z: float, log_tokens: float) -> float:
        a, b, c = self.coef
        return _sigmoid(a * z + b * (log_tokens - self.lt_mean) + c)

    def similarities(self, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Cosine similarity of one document (its l2-normalised tf-idf columns) to each label."""
        if not idx.size:
            return np.zeros(self.n_labels)
        starts, ends = self.term_ptr[idx], self.term_ptr[idx + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(self.n_labels)
        # Positions of every (term, label) entry the document's terms touch, without a loop.
        offsets = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)
        return np.bincount(
            self.label_ids[offsets], weights=self.label_w[offsets] * np.repeat(w, lens),
            minlength=self.n_labels,
        )

    def adjust(self, z: float, log_tokens: float, idx: np.ndarray, w: np.ndarray) -> float:
        """p_small_ok for one prompt: the recalibrated score plus its neighbours' residual."""
        p = self.recalibrated(z, log_tokens)
        sims = self.similarities(idx, w)
        k = min(self.k, sims.size)
        if k:
            top = np.argpartition(-sims, k - 1)[:k]
            s = np.where(sims[top] >= MIN_SIMILARITY, sims[top], 0.0)
            if s.sum() > 0:
                p += float(s @ self.resid[top]) / (float(s.sum()) + NEIGHBOUR_PRIOR)
        return min(1.0, max(0.0, p))

    # -- training time ---------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        z: np.ndarray,
        log_tokens: np.ndarray,
        y: np.ndarray,
        encoded: Sequence[tuple[np.ndarray, np.ndarray]],
        n_terms: int,
    ) -> LabelCorrection:
        """From the general model's scores ``z`` on the labelled prompts (which it did
        not train on), their log token counts, labels in 0..1 and tf-idf encodings."""
        from scipy.optimize import minimize

        lt_mean = float(log_tokens.mean())
        x = np.c_[z, log_tokens - lt_mean]

        # Soft labels (p in 0..1) in the logistic loss. The penalty pulls towards the
        # general model as it is (a = 1, b = 0), not towards a flat score: a few dozen
        # labels should move its ranking, not replace it with their own noise.
        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            a, b, c = theta
            u = a * x[:, 0] + b * x[:, 1] + c
            p = 1.0 / (1.0 + np.exp(-np.clip(u, -40, 40)))
            g = p - y
            value = float(np.sum(np.logaddexp(0.0, u) - y * u)) + RECAL_PRIOR * ((a - 1) ** 2 + b * b)
            grad = np.array([g @ x[:, 0] + 2 * RECAL_PRIOR * (a - 1), g @ x[:, 1] + 2 * RECAL_PRIOR * b,
                             g.sum()])
            return value, grad

        coef = minimize(loss, np.array([1.0, 0.0, 0.0]), jac=True, method="L-BFGS-B").x
        p = 1.0 / (1.0 + np.exp(-(x @ coef[:2] + coef[2])))
        # Inverted index: for each term, the labelled prompts holding it and their weights.
        terms = np.concatenate([e[0] for e in encoded]) if encoded else np.zeros(0, np.int64)
        weights = np.concatenate([e[1] for e in encoded]) if encoded else np.zeros(0)
        labels = np.repeat(np.arange(len(encoded)), [e[0].size for e in encoded])
        order = np.argsort(terms, kind="stable")
        ptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(np.bincount(terms, minlength=n_terms), out=ptr[1:])
        return cls(coef, lt_mean, n_terms, ptr, labels[order], weights[order], y - p)

    # -- storage ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        tmp = Path(f"{path}.tmp{os.getpid()}.npz")
        np.savez_compressed(
            tmp,
            format_version=np.array(FORMAT_VERSION),
            coef=self.coef,
            lt_mean=np.array(self.lt_mean),
            n_terms=np.array(self.n_terms),
            term_ptr=self.term_ptr,
            label_ids=self.label_ids.astype(np.int32),
            label_w=self.label_w.astype(np.float32),
            resid=self.resid,
            k=np.array(self.k),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelCorrection:
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format_version"]) != FORMAT_VERSION:
                    raise ConfigError(f"{path}: label correction format {int(z['format_version'])}, "
                                      f"this version reads {FORMAT_VERSION}: retrain")
                return cls(z["coef"], float(z["lt_mean"]), int(z["n_terms"]), z["term_ptr"],
                           z["label_ids"], z["label_w"], z["resid"], int(z["k"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot read label correction {path}: {exc}") from exc
