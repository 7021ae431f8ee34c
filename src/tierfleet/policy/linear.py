"""A linear model over tf-idf terms and dense features, stored as plain arrays.

Training uses scikit-learn; routing only needs a dot product, so the runtime is
numpy alone. Artifacts are ``.npz`` files of numbers and strings, read with
``allow_pickle=False``: loading a model can never run code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .features import DENSE_NAMES, Vocabulary

FORMAT_VERSION = 1
# Standardised dense features are clipped to +-DENSE_CLIP (training and routing
# alike): a prompt far longer than any training prompt of its kind must not
# extrapolate a length weight without bound (a 2,000-word reading question read
# as a summary request, only because it was long). 0 means no clipping (models
# written before the clip existed).
DENSE_CLIP = 2.5


def standardise(
    dense: np.ndarray, mean: np.ndarray, scale: np.ndarray, clip: float | np.ndarray
) -> np.ndarray:
    """(x - mean) / scale, clipped to +-clip (one bound, or one per feature; 0: no clip)."""
    z = (np.atleast_2d(dense) - mean) / scale
    bound = np.asarray(clip, dtype=np.float64)
    if not np.any(bound > 0):
        return z
    bound = np.where(bound > 0, bound, np.inf)
    return np.clip(z, -bound, bound)


class LinearModel:
    """Multinomial (softmax) or binary (sigmoid) logistic model.

    ``coef`` has one row per class; a binary model keeps a single row whose
    sigmoid is the probability of ``classes[1]``.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        coef: np.ndarray,
        intercept: np.ndarray,
        classes: Sequence[str],
        dense_mean: np.ndarray,
        dense_scale: np.ndarray,
        dense_weight: float,
        dense_clip: float | np.ndarray = 0.0,
    ) -> None:
        self.vocab = vocab
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.classes = [str(c) for c in classes]
        self.dense_mean = np.asarray(dense_mean, dtype=np.float64)
        self.dense_scale = np.asarray(dense_scale, dtype=np.float64)
        self.dense_weight = float(dense_weight)
        self.dense_clip = np.asarray(dense_clip, dtype=np.float64)
        n_terms = len(vocab)
        # Column-major views: one row per term, so a document's terms gather rows.
        self._term_coef = np.ascontiguousarray(self.coef[:, :n_terms].T)
        self._dense_coef = self.coef[:, n_terms:]
        if self._dense_coef.shape[1] != len(DENSE_NAMES):
            raise ConfigError(
                f"policy model expects {self._dense_coef.shape[1]} dense features, "
                f"this version computes {len(DENSE_NAMES)}: retrain with `tierfleet train`"
            )

    @property
    def binary(self) -> bool:
        return self.coef.shape[0] == 1

    @property
    def term_coef(self) -> np.ndarray:
        """(n_terms, n_rows): the rows a document's terms gather."""
        return self._term_coef

    def dense_part(self, dense: np.ndarray) -> np.ndarray:
        return self._dense_part(dense)

    def _dense_part(self, dense: np.ndarray) -> np.ndarray:
        z = standardise(dense, self.dense_mean, self.dense_scale, self.dense_clip) * self.dense_weight
        return z @ self._dense_coef.T + self.intercept

    def encode(self, terms: Sequence[Mapping[str, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each document as (columns, weights) in this model's vocabulary."""
        return [self.vocab.encode(t) for t in terms]

    def decision(
        self,
        terms: Sequence[Mapping[str, int]],
        dense: np.ndarray,
        encoded: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """Raw scores, shape (n_docs, n_rows). ``encoded``: ``encode(terms)`` done already
        (models that share a vocabulary encode a document once)."""
        enc = encoded if encoded is not None else self.encode(terms)
        n = len(enc)
        out = self._dense_part(dense)
        if n == 1:
            idx, w = enc[0]
            if idx.size:
                out[0] += w @ self._term_coef[idx]
            return out
        from scipy import sparse  # batches only: single decisions stay numpy-only

        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([e[0].size for e in enc], out=indptr[1:])
        x = sparse.csr_matrix(
            (np.concatenate([e[1] for e in enc]), np.concatenate([e[0] for e in enc]), indptr),
            shape=(n, self._term_coef.shape[0]),
        )
        out += x @ self._term_coef
        return out

    def predict_proba(
        self,
        terms: Sequence[Mapping[str, int]],
        dense: np.ndarray,
        encoded: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """Class probabilities, shape (n_docs, n_classes)."""
        return self.proba(self.decision(terms, dense, encoded))

    def proba(self, z: np.ndarray) -> np.ndarray:
        """Probabilities from raw scores (n_docs, n_rows)."""
        if self.binary:
            p1 = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -40, 40)))
            return np.column_stack([1.0 - p1, p1])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    # -- storage -----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp{os.getpid()}.npz")
        np.savez_compressed(
            tmp,
            format_version=np.array(FORMAT_VERSION),
            terms=np.array(self.vocab.terms, dtype=np.str_),
            idf=self.vocab.idf.astype(np.float32),
            coef=self.coef.astype(np.float32),
            intercept=self.intercept,
            classes=np.array(self.classes, dtype=np.str_),
            dense_names=np.array(DENSE_NAMES, dtype=np.str_),
            dense_mean=self.dense_mean,
            dense_scale=self.dense_scale,
            dense_weight=np.array(self.dense_weight),
            dense_clip=np.array(self.dense_clip),
        )
        tmp.replace(path)  # a reader never sees half a file

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearModel:
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["format_version"])
                if version != FORMAT_VERSION:
                    raise ConfigError(
                        f"{path}: model format {version}, this version reads {FORMAT_VERSION}: "
                        "retrain with `tierfleet train`"
                    )
                if tuple(str(n) for n in z["dense_names"]) != DENSE_NAMES:
                    raise ConfigError(f"{path}: dense features differ; retrain with `tierfleet train`")
                vocab = Vocabulary([str(t) for t in z["terms"]], z["idf"].astype(np.float64))
                return cls(
                    vocab,
                    z["coef"],
                    z["intercept"],
                    [str(c) for c in z["classes"]],
                    z["dense_mean"],
                    z["dense_scale"],
                    float(z["dense_weight"]),
                    z["dense_clip"] if "dense_clip" in z.files else 0.0,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot read policy model {path}: {exc}") from exc
