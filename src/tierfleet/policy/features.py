"""Turning a prompt into numbers, the same way at training time and at routing time.

Two kinds of signal: sparse terms (word unigrams and bigrams, CJK characters and
their pairs, short punctuation runs that mark code and maths, and the first and last
few words, where the task usually hides) and a handful of dense structure features
(length, lines, digits, options, code lines, maths symbols). Both generalise
across datasets better than raw character n-grams, and both are cheap: a 1k-token
prompt is featurised in a few hundred microseconds in plain Python.

Only the head and tail of a long prompt feed the terms; the length features see
the whole prompt through the token count.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .keywords import CUE_KINDS, cue_hits

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
# A CJK character alone, a run of other letters, a run of digits, or up to three
# punctuation marks ("():", "==", "{", "\\frac" yields "\\" then "frac").
_TOKEN = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+|\d+|[^\w\s]{{1,3}}")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_OPTION = re.compile(r"(?m)^\s*\(?[A-Ea-e][\).:]\s")
_CODE_LINE = re.compile(
    r"(?m)^\s*(?:def |class |import |from \S+ import|#include|function |public |return\b|"
    r"const |let |var |fn |func )|[{};]\s*$"
)
_MATH = re.compile(r"[=+*/^<>]|\\frac|\\sqrt|\$")
_ANSWER = re.compile(r"(?i)\banswer\s*:")
# Prompts sent as the repr of a Python list of strings ("['...']"), as some
# routing datasets and some client libraries do: unwrap them so the words, not
# the quoting, reach the features.
_LIST_REPR = re.compile(r"^\[\s*(['\"])(.*)\1\s*\]$", re.S)
_ESCAPE = re.compile(r"\\(n|t|'|\"|\\)")
_ESCAPES = {"n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\"}

HEAD_CHARS = 3000
TAIL_CHARS = 1000
EDGE_TERMS = 6
DENSE_NAMES: tuple[str, ...] = (
    "log_tokens",
    "log_lines",
    "digit_share",
    "cjk_share",
    "log_questions",
    "log_options",
    "log_code_lines",
    "log_math_marks",
    "log_answer_marks",
    *(f"cue_{k.value}" for k in CUE_KINDS),
)
_SAMPLE = 5000  # characters the share features look at


def normalize_prompt(text: str) -> str:
    """The prompt as the features should see it (list-repr quoting removed)."""
    if len(text) > 4 and text[0] == "[" and text[-1] == "]":
        m = _LIST_REPR.match(text)
        if m:
            body = m.group(2)
            # Several list items: "...', '..." joins them one per line.
            body = re.sub(r"(['\"]),\s*\1", "\n", body)
            return _ESCAPE.sub(lambda e: _ESCAPES[e.group(1)], body)
    return text


def clip(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def analyze(text: str) -> list[str]:
    """Terms of one (normalised) prompt: unigrams, bigrams and the leading words."""
    toks = _TOKEN.findall(clip(text).lower())
    # Numbers differ everywhere; their length is what carries a signal.
    toks = [f"#{min(len(t), 4)}" if t[0].isdigit() else t for t in toks]
    terms = toks + [f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False)]
    # Where the instruction usually sits: the first and the last few words.
    terms.extend(f"^{t}" for t in toks[:EDGE_TERMS])
    terms.extend(f"${t}" for t in toks[-EDGE_TERMS:])
    return terms


def dense(text: str, n_tokens: int) -> list[float]:
    """Structure features of one (normalised) prompt, in DENSE_NAMES order."""
    sample = text[:_SAMPLE]
    n = max(len(sample), 1)
    return [
        math.log1p(n_tokens),
        math.log1p(text.count("\n")),
        sum(c.isdigit() for c in sample) / n,
        len(_CJK_CHAR.findall(sample)) / n,
        math.log1p(sample.count("?") + sample.count("\uff1f")),
        math.log1p(len(_OPTION.findall(sample))),
        math.log1p(len(_CODE_LINE.findall(sample))),
        math.log1p(len(_MATH.findall(sample))),
        math.log1p(len(_ANSWER.findall(sample))),
        *(math.log1p(h) for h in cue_hits(text)),
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
        cls, docs: Iterable[list[str]], min_df: int = 2, max_terms: int = 40_000
    ) -> Vocabulary:
        df: Counter[str] = Counter()
        n = 0
        for terms in docs:
            df.update(set(terms))
            n += 1
        kept = [(c, t) for t, c in df.items() if c >= min_df]
        # Most frequent first; ties by term so the vocabulary is reproducible.
        kept.sort(key=lambda ct: (-ct[0], ct[1]))
        kept = kept[:max_terms]
        kept.sort(key=lambda ct: ct[1])
        terms = [t for _, t in kept]
        idf = np.array([math.log((1 + n) / (1 + c)) + 1.0 for c, _ in kept])
        return cls(terms, idf)

    def encode(self, terms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and l2-normalised tf-idf weights of one document."""
        counts = Counter(terms)
        index = self.index
        cols: list[int] = []
        tfs: list[float] = []
        for t, c in counts.items():
            j = index.get(t)
            if j is not None:
                cols.append(j)
                tfs.append(1.0 + math.log(c))
        if not cols:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        idx = np.fromiter(cols, dtype=np.int64, count=len(cols))
        w = np.fromiter(tfs, dtype=np.float64, count=len(tfs)) * self.idf[idx]
        norm = float(np.sqrt(w @ w))
        return idx, (w / norm if norm > 0 else w)
