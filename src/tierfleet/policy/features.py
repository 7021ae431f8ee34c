"""Turning a prompt into numbers, the same way at training time and at routing time.

Two kinds of signal: sparse terms (word unigrams and bigrams, CJK characters and
their pairs, short punctuation runs that mark code and maths, and the first and
last few words, where the task usually hides) and a handful of dense structure
features (length, lines, digits, options, code marks, maths symbols, keyword cues
per kind). Both generalise across datasets better than raw character n-grams, and
both are cheap: a prompt of any length is featurised in a few hundred
microseconds in plain Python, because only its head and tail (``text.edges``)
feed the terms; the length features see the whole prompt through the token count.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat

import numpy as np

from .keywords import CUE_KINDS, cue_hits
from .text import CJK, Doc

_CJK_CHAR = re.compile(f"[{CJK}]")
_DIGITS = "0123456789"
_MATH_MARKS = "=+*/^<>$"

DENSE_NAMES: tuple[str, ...] = (
    "log_tokens",
    "log_lines",
    "digit_share",
    "cjk_share",
    "log_questions",
    "log_options",
    "log_code_marks",
    "log_math_marks",
    "log_answer_marks",
    *(f"cue_{k.value}" for k in CUE_KINDS),
    # How hard the text is on the tokenizer: scripts and languages a small model has
    # seen little of cost more tokens per character (and small models do worse there).
    "log_tokens_per_char",
    "non_ascii_share",
)


def dense(doc: Doc, n_tokens: int, hits: list[int] | None = None) -> list[float]:
    """Structure features of one prompt, in DENSE_NAMES order (``hits``: its cue_hits).

    Counts other than length and lines read the head and tail of the prompt only.
    """
    edge = doc.edge
    n = max(len(edge), 1)
    return [
        math.log1p(n_tokens),
        math.log1p(doc.text.count("\n")),
        # str.count per character runs in C: far cheaper than a regex or a loop.
        sum(map(edge.count, _DIGITS)) / n,
        len(_CJK_CHAR.findall(edge)) / n if doc.cjk else 0.0,
        math.log1p(edge.count("?") + edge.count("\uff1f")),
        math.log1p(doc.options),
        math.log1p(doc.code_marks),
        math.log1p(sum(map(edge.count, _MATH_MARKS))),
        math.log1p(edge.count("answer:")),
        *(math.log1p(h) for h in (cue_hits(doc) if hits is None else hits)),
        # Shrunk towards English's ~4 characters a token, so that "hi" is not a tail.
        math.log((n_tokens + 8) / (len(doc.text) + 32)),
        # encode(..., "ignore") drops the non-ASCII characters in C.
        (len(edge) - len(edge.encode("ascii", "ignore"))) / n,
    ]


class Vocabulary:
    """Term -> column, with inverse document frequencies (sublinear tf-idf, l2-normalised)."""

    def __init__(self, terms: Sequence[str], idf: np.ndarray) -> None:
        self.terms = list(terms)
        self.index = {t: i for i, t in enumerate(self.terms)}
        self.idf = np.asarray(idf, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.terms)

    @classmethod
    def fit(
        cls, docs: Iterable[Mapping[str, int]], min_df: int = 2, max_terms: int = 40_000
    ) -> Vocabulary:
        df: Counter[str] = Counter()
        n = 0
        for terms in docs:
            df.update(terms.keys())
            n += 1
        kept = [(c, t) for t, c in df.items() if c >= min_df]
        # Most frequent first; ties by term so the vocabulary is reproducible.
        kept.sort(key=lambda ct: (-ct[0], ct[1]))
        kept = kept[:max_terms]
        kept.sort(key=lambda ct: ct[1])
        terms = [t for _, t in kept]
        idf = np.array([math.log((1 + n) / (1 + c)) + 1.0 for c, _ in kept])
        return cls(terms, idf)

    def encode(self, counts: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and l2-normalised tf-idf weights of one document's term counts."""
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        # map() over dict.get runs in C: a few times faster than a Python loop.
        cols = np.array(list(map(self.index.get, counts, repeat(-1))), dtype=np.int64)
        keep = cols >= 0
        if not keep.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        tf = np.array(list(counts.values()), dtype=np.float64)[keep]
        idx = cols[keep]
        w = (1.0 + np.log(tf)) * self.idf[idx]
        norm = float(np.sqrt(w @ w))
        return idx, (w / norm if norm > 0 else w)
