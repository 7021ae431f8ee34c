"""Similar queries learn from a bad answer: a bounded memory of prompts the small model failed.

Seed 004: "if the small model fails on a query, upgrade future similar queries".
When a cheap answer is judged bad (feedback, a shadow test's judge, the quality
check's escalation), the prompt's feature vector goes in here with the tier
that failed; the ``SimilarBadAnswer`` policy stage (``stages.py``) then moves a
new job whose prompt is a near neighbour one tier above that one, and says so.

Pure code: no Redis, no clock. The owner passes ``now`` to ``add`` and
``prune`` and persists entries through a ``MemoryStore`` (a protocol: JSON-able
entries in, entries out), so the routing stage stays a pure function of the
memory's contents. Bounded in size (oldest out first) and in age.

The feature vector is a signed feature-hashing sketch of the prompt's terms (the
same terms the tf-idf models read), l2-normalised: independent of any trained
vocabulary, so a retrained model does not invalidate the memory, and a
similarity is one matrix-vector product.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .text import read_doc

SKETCH_DIM = 256
# 2,000 x 256 float32 is 2 MB: a lookup is one matrix-vector product of ~100 µs. Much
# larger and the product leaves the CPU cache (5,000 x 512 float64 took ~2 ms).
DEFAULT_MAX_SIZE = 2_000
DEFAULT_MAX_AGE_S = 30 * 86_400.0
# Cosine similarity of the sketches from which two prompts count as "similar":
# rephrasings of one request sit above it, different requests on one topic below.
DEFAULT_THRESHOLD = 0.6
# term -> signed bucket code (+-(bucket + 1)), per sketch size; cleared when it grows
# past _CACHE_MAX, so hashing stays off the routing path for the usual terms.
_CODES: dict[int, dict[str, int]] = {}
_CACHE_MAX = 200_000


def _code(term: str, dim: int) -> int:
    h = zlib.crc32(term.encode("utf-8"))
    return (h % dim + 1) * (1 if h & 0x80000000 else -1)


def sketch(terms: Mapping[str, int], dim: int = SKETCH_DIM) -> np.ndarray:
    """A prompt's terms hashed into ``dim`` signed buckets (sublinear tf), l2-normalised."""
    if not terms:
        return np.zeros(dim, dtype=np.float32)
    cache = _CODES.setdefault(dim, {})
    if len(cache) > _CACHE_MAX:
        cache.clear()
    codes = list(map(cache.get, terms))
    for i, (term, c) in enumerate(zip(terms, codes, strict=True)):
        if c is None:
            codes[i] = cache[term] = _code(term, dim)
    code = np.array(codes, dtype=np.int64)
    tf = np.fromiter(terms.values(), dtype=np.float64, count=len(code))
    v = np.bincount(np.abs(code) - 1, weights=(1.0 + np.log(tf)) * np.sign(code), minlength=dim)
    norm = float(np.sqrt(v @ v))
    return (v / norm if norm > 0 else v).astype(np.float32)


def prompt_vector(text: str, dim: int = SKETCH_DIM) -> np.ndarray:
    return sketch(read_doc(text).terms, dim)


@dataclass(frozen=True)
class BadAnswer:
    """One prompt whose answer on ``tier`` was judged bad."""

    vector: np.ndarray
    tier: str
    at: float  # seconds since the epoch, from the owner's clock
    job_id: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"vector": [round(float(x), 6) for x in self.vector], "tier": self.tier, "at": self.at,
                "job_id": self.job_id, "note": self.note}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BadAnswer:
        return cls(np.asarray(d["vector"], dtype=np.float32), str(d["tier"]), float(d["at"]),
                   str(d.get("job_id", "")), str(d.get("note", "")))


class MemoryStore(Protocol):
    """Where entries live between processes (Redis, a file): JSON-able dicts in and out."""

    def load(self) -> list[dict[str, Any]]: ...

    def save(self, entries: Sequence[dict[str, Any]]) -> None: ...


class ListStore:
    """A store in a Python list: for tests and single-process use."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def load(self) -> list[dict[str, Any]]:
        return list(self.entries)

    def save(self, entries: Sequence[dict[str, Any]]) -> None:
        self.entries = list(entries)


@dataclass(frozen=True)
class Match:
    similarity: float
    entry: BadAnswer


class BadAnswerMemory:
    """Nearest-neighbour memory of bad small-model answers, bounded in size and age."""

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_SIZE,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        threshold: float = DEFAULT_THRESHOLD,
        dim: int = SKETCH_DIM,
    ) -> None:
        if max_size < 1 or max_age_s <= 0 or not 0 < threshold <= 1:
            raise ValueError("max_size >= 1, max_age_s > 0 and 0 < threshold <= 1")
        self.max_size, self.max_age_s, self.threshold, self.dim = max_size, max_age_s, threshold, dim
        self._entries: list[BadAnswer] = []  # oldest first
        self._matrix: np.ndarray | None = None  # rows = entries, rebuilt after a change

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[BadAnswer]:
        return list(self._entries)

    def add(self, text: str, tier: str, now: float, job_id: str = "", note: str = "") -> BadAnswer:
        """Remember that ``text`` got a bad answer on ``tier``; drops the expired and the oldest."""
        entry = BadAnswer(prompt_vector(text, self.dim), tier, now, job_id, note)
        self._entries.append(entry)
        self.prune(now)
        return entry

    def prune(self, now: float) -> int:
        """Drop entries older than max_age_s and the oldest beyond max_size; returns how many."""
        before = len(self._entries)
        keep = [e for e in self._entries if now - e.at <= self.max_age_s]
        keep.sort(key=lambda e: e.at)
        self._entries = keep[-self.max_size :]
        self._matrix = None
        return before - len(self._entries)

    def nearest(self, vector: np.ndarray) -> Match | None:
        """The most similar remembered prompt at or above the threshold, if any."""
        if not self._entries:
            return None
        if self._matrix is None:
            self._matrix = np.stack([e.vector for e in self._entries])
        # einsum, not @: BLAS may run this product on threads that, on a busy 2-CPU host,
        # took milliseconds instead of tens of microseconds; einsum stays on this one.
        sims = np.einsum("ij,j->i", self._matrix, vector.astype(np.float32, copy=False))
        i = int(np.argmax(sims))
        s = float(sims[i])
        return Match(s, self._entries[i]) if s >= self.threshold else None

    def nearest_text(self, text: str) -> Match | None:
        return self.nearest(prompt_vector(text, self.dim)) if self._entries else None

    # -- persistence -------------------------------------------------------------------------

    def save(self, store: MemoryStore) -> None:
        store.save([e.to_json() for e in self._entries])

    def load(self, store: MemoryStore, now: float) -> int:
        """Replace the contents with the store's (expired and surplus entries dropped)."""
        entries = [BadAnswer.from_json(d) for d in store.load()]
        self._entries = [e for e in entries if e.vector.shape == (self.dim,)]
        self.prune(now)
        return len(self._entries)
