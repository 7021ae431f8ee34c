"""Training the two policy models: the kind classifier and p_small_ok.

Data
----
By default both models train on the labelled public prompts in the shared dev
folder (``$TIERFLEET_DATA_DIR``, else ``../shared/data/dev``), read at run time
and never copied; the kind classifier also sees our own template prompts
(``synth.py``) for the kinds the public sets lack.

Kind labels come from each set's task or label field (``TASK_KINDS``,
``LABEL_KINDS`` below): maths and logic -> reasoning; programming -> code;
quiz and knowledge questions (multiple choice or open) -> chat; "make a sentence
from these words" and creative prompts -> writing; the Chinese instruction set
keeps its own categories (summarization -> summary, extract -> extraction,
classification -> classification, rewrite/generation/brainstorming -> writing,
open/closed qa -> chat; its "rewrite" requests that ask for a translation,
翻译, -> translation).

p_small_ok labels come from per-model quality scores. For each prompt the label
is the share of (small, large) model pairs in which the small model scored at
least as well as the large one, small and large being a group of 7-13B open
models and a group of ~50B+ models (``SMALL_MODELS``, ``LARGE_MODELS``). It is a
soft label in 0..1, trained as a weighted logistic regression. Pooling several
pairs keeps the estimate about the prompt's difficulty rather than about one
model's quirks. Each benchmark is a fixed effect in that fit (its own column,
dropped afterwards), so the kept weights say more of what makes a prompt harder
than its neighbours and less of which benchmark it came from.

A user's own traffic
--------------------
``tierfleet train --labels FILE`` reads JSON lines, one prompt each::

    {"prompt": "...", "kind": "summary"}                  # trains the kind classifier
    {"prompt": "...", "small_ok": 1}                      # 0/1 or a share in 0..1
    {"prompt": "...", "small_score": 0.4, "large_score": 0.9}   # small_ok = small >= large
    {"prompt": "...", "kind": "code", "small_ok": 0}      # both

A model with too few labels in the file (fewer than ``MIN_ROWS``, or one class
only) is copied unchanged from the current artifacts. ``--with-dev`` adds the
dev data to the user's rows: kind labels join the classifier's training rows;
p_small_ok labels do not join the general model's fit (a few hundred rows among
thousands barely move it) but fit a ``LabelCorrection`` on top of it
(``correction.py``: a recalibration on score and length, pulled towards the
model's own ranking, and the shrunk residual of close labelled neighbours),
written as ``labels.npz`` next to the models.

Everything is seeded, so the same data gives the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import tokens
from ..errors import ConfigError
from ..jobs import MODEL_KINDS, Kind
from . import synth
from .correction import CORRECTION_FILE, LabelCorrection
from .features import DENSE_NAMES, Vocabulary, dense
from .linear import DENSE_CLIP, LinearModel, standardise
from .models import KIND_FILE, META_FILE, SMALL_OK_FILE, artifacts_dir
from .text import normalize_prompt, read_doc

DATA_ENV = "TIERFLEET_DATA_DIR"
SEED = 20240611
MIN_ROWS = 20
MAX_PROMPT_CHARS = 200_000

TASK_KINDS: dict[str, Kind] = {
    # maths, logic, hard science
    "gsm8k": Kind.REASONING,
    "math": Kind.REASONING,
    "agentverse-mgsm": Kind.REASONING,
    "mgsm": Kind.REASONING,
    "agentverse-logicgrid": Kind.REASONING,
    "gpqa": Kind.REASONING,
    # programming
    "mbpp": Kind.CODE,
    "human_eval": Kind.CODE,
    "humaneval": Kind.CODE,
    # knowledge and common-sense questions
    "mmlu": Kind.CHAT,
    "arc_challenge": Kind.CHAT,
    "arc-challenge": Kind.CHAT,
    "openbook_qa": Kind.CHAT,
    "commonsense_qa": Kind.CHAT,
    "natural_qa": Kind.CHAT,
    "trivia_qa": Kind.CHAT,
    "winogrande": Kind.CHAT,
    # "write a sentence using these words"
    "commongen": Kind.WRITING,
}
LABEL_KINDS: dict[str, Kind] = {
    # vicuna_bench
    "generic": Kind.CHAT,
    "knowledge": Kind.CHAT,
    "common-sense": Kind.CHAT,
    "counterfactual": Kind.CHAT,
    "roleplay": Kind.WRITING,
    "writing": Kind.WRITING,
    "coding": Kind.CODE,
    "math": Kind.REASONING,
    "fermi": Kind.REASONING,
    # belle_zh_kinds
    "open qa": Kind.CHAT,
    "closed qa": Kind.CHAT,
    "brainstorming": Kind.WRITING,
    "rewrite": Kind.WRITING,
    "generation": Kind.WRITING,
    "classification": Kind.CLASSIFICATION,
    "summarization": Kind.SUMMARY,
    "code": Kind.CODE,
    "extract": Kind.EXTRACTION,
}
# 7-13B open models (the size of a small local box) against ~50B+ models. The
# ChatQA models are left out: they fail the multiple-choice formats outright
# (mean score 0.19 for the 70B one), which says nothing about the prompts.
SMALL_MODELS: dict[str, list[str]] = {
    "dcrouter": [
        "qwen2.5-7b-instruct",
        "mistral-7b-instruct-v0.3",
        "gemma-2-9b-it",
        "llama-3.1-8b-instruct",
    ],
    "routerbench": [
        "mistralai/mistral-7b-chat",
        "WizardLM/WizardLM-13B-V1.2",
        "mistralai/mixtral-8x7b-chat",
    ],
}
LARGE_MODELS: dict[str, list[str]] = {
    "dcrouter": ["llama-3.1-nemotron-51b-instruct", "llama-3.3-nemotron-super-49b-v1"],
    "routerbench": ["gpt-4-1106-preview"],
}
_ZH_TRANSLATE = re.compile("翻译|译成|译为")
KIND_CAP_PER_TASK = 300
KIND_C = 8.0
SMALL_OK_C = 0.5
DENSE_WEIGHT = 1.0
# The fixed-effect columns' value, i.e. how freely a benchmark's level moves against
# the words' weights (C penalises every column alike). A trade-off, measured with
# bench/routing.py and a mixed 70/30 split: at 3 the within-benchmark cut on held-out
# benchmarks is best (LOBO mean 33.6%) but mixed traffic suffers (dcrouter's mixed
# held-out cut 64.8% -> 43.3%); at 1 the LOBO mean is 31.6% (29.9% without fixed
# effects) and mixed traffic keeps 63.6%. Either way the model no longer ranks whole
# benchmarks it never saw (Spearman of a held-out benchmark's mean p_small_ok with
# its true level: +0.52 without, -0.41 with): a new workflow's level is the average.
GROUP_SCALE = 1.0
SMALL_OK_TOKENIZER_CLIP = 3.0
# The kind model's bound on standardised log_tokens: ~0, i.e. it does not read length
# (log_lines still hints at structure). Every chat prompt of the training data is
# short, so any length weight, clipped or not, called a long reading question a
# summary or reasoning job: held-out MMLU 7% right with it, 45% without (LOBO
# kind macro 0.783 -> 0.792). Long chat still goes up a tier on its token count
# (policy.short_chat_tokens), which does not depend on this model.
KIND_LENGTH_CLIP = 1e-12
# A vocabulary that stays in the CPU cache: lookups of a prompt's terms are the
# largest cost of a routing decision after token counting.
MAX_TERMS = 20_000
LEARNED_KINDS = sorted(k.value for k in MODEL_KINDS if k is not Kind.VISION)


@dataclass(frozen=True)
class KindRow:
    prompt: str
    kind: Kind
    source: str
    task: str


@dataclass(frozen=True)
class OkRow:
    prompt: str
    small_ok: float  # 0..1
    source: str
    task: str
    scores: dict[str, float]


# -- data ------------------------------------------------------------------------------------


def find_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    here = Path(__file__).resolve()
    candidates = [
        Path(explicit) if explicit else None,
        Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None,
        Path.cwd() / ".." / "shared" / "data" / "dev",
        here.parents[3] / ".." / "shared" / "data" / "dev",
    ]
    for c in candidates:
        if c is not None and (c / "dcrouter_train.jsonl").exists():
            return c.resolve()
    raise ConfigError(
        "dev data not found: set TIERFLEET_DATA_DIR to the folder holding "
        "dcrouter_train.jsonl (or pass --labels FILE with your own labelled traffic)"
    )


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield json.loads(line)


def load_kind_rows(data_dir: Path) -> list[KindRow]:
    rows: list[KindRow] = []
    for name, field, source in [
        ("dcrouter_train.jsonl", "task", "dcrouter"),
        ("routerbench_train.jsonl", "task", "routerbench"),
        ("humaneval_prompts.jsonl", "label", "humaneval"),
        ("vicuna_bench.jsonl", "label", "vicuna"),
        ("belle_zh_kinds.jsonl", "label", "belle_zh"),
    ]:
        path = data_dir / name
        if not path.exists():
            continue
        table = TASK_KINDS if field == "task" else LABEL_KINDS
        for r in _jsonl(path):
            kind = table.get(str(r.get(field, "")))
            if source == "belle_zh" and kind is Kind.WRITING and _ZH_TRANSLATE.search(r["prompt"]):
                kind = Kind.TRANSLATION  # that set files translation requests under "rewrite"
            if kind is not None:
                rows.append(KindRow(normalize_prompt(r["prompt"]), kind, source, str(r[field])))
    return _dedupe(rows)


def _dedupe(rows: list[KindRow]) -> list[KindRow]:
    seen: set[str] = set()
    out = []
    for r in rows:
        key = r.prompt.strip()
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def pooled_small_ok(scores: dict[str, float], small: Sequence[str], large: Sequence[str]) -> float | None:
    pairs = [
        float(scores[s] >= scores[lg]) for s in small for lg in large if s in scores and lg in scores
    ]
    return sum(pairs) / len(pairs) if pairs else None


def load_ok_rows(data_dir: Path) -> list[OkRow]:
    rows: list[OkRow] = []
    for name, source in [("dcrouter_train.jsonl", "dcrouter"), ("routerbench_train.jsonl", "routerbench")]:
        path = data_dir / name
        if not path.exists():
            continue
        for r in _jsonl(path):
            scores = {k: float(v) for k, v in r.get("scores", {}).items()}
            y = pooled_small_ok(scores, SMALL_MODELS[source], LARGE_MODELS[source])
            if y is not None:
                rows.append(OkRow(normalize_prompt(r["prompt"]), y, source, str(r.get("task", "")), scores))
    return rows


def synth_rows(per_kind: int = 300) -> list[KindRow]:
    return [KindRow(t, k, "templates", k.value) for t, k in synth.generate(per_kind, seed=SEED % 1000)]


def load_user_labels(path: str | os.PathLike[str]) -> tuple[list[KindRow], list[OkRow], list[str]]:
    """Rows of a user's labelled traffic file, and one message per line that was skipped."""
    kinds: list[KindRow] = []
    oks: list[OkRow] = []
    problems: list[str] = []
    valid = set(LEARNED_KINDS)
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as exc:
                problems.append(f"line {n}: not JSON ({exc.__class__.__name__})")
                continue
            prompt = r.get("prompt") if isinstance(r, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                problems.append(f"line {n}: no 'prompt' string")
                continue
            prompt = normalize_prompt(prompt[:MAX_PROMPT_CHARS])
            used = False
            if "kind" in r:
                if r["kind"] in valid:
                    kinds.append(KindRow(prompt, Kind(r["kind"]), "labels", r["kind"]))
                    used = True
                else:
                    problems.append(f"line {n}: kind {r['kind']!r} is not one of {LEARNED_KINDS}")
            y = _user_small_ok(r)
            if isinstance(y, str):
                problems.append(f"line {n}: {y}")
            elif y is not None:
                oks.append(OkRow(prompt, y, "labels", str(r.get("kind", "")), {}))
                used = True
            if not used and "kind" not in r:
                problems.append(f"line {n}: neither 'kind' nor 'small_ok'/'small_score'+'large_score'")
    return kinds, oks, problems


def _user_small_ok(r: dict[str, Any]) -> float | str | None:
    if "small_ok" in r:
        v = r["small_ok"]
        if isinstance(v, bool):
            return float(v)
        if isinstance(v, int | float) and 0 <= v <= 1 and not math.isnan(v):
            return float(v)
        return "small_ok must be 0, 1 or a share in 0..1"
    if "small_score" in r or "large_score" in r:
        s, lg = r.get("small_score"), r.get("large_score")
        if isinstance(s, int | float) and isinstance(lg, int | float):
            return float(s >= lg)
        return "small_score and large_score must both be numbers"
    return None


# -- fitting ---------------------------------------------------------------------------------


_FEATURE_CACHE: dict[str, tuple[Counter[str], list[float]]] = {}


def featurize(texts: Sequence[str]) -> tuple[list[Counter[str]], np.ndarray]:
    """Term counts and dense features; a text seen earlier in this process is not read again."""
    todo = [t for t in dict.fromkeys(texts) if t not in _FEATURE_CACHE]
    if todo:
        counts = tokens.count_many(todo)
        for t, n in zip(todo, counts, strict=True):
            doc = read_doc(t)
            _FEATURE_CACHE[t] = (doc.terms, dense(doc, n))
    terms = [_FEATURE_CACHE[t][0] for t in texts]
    feats = np.array([_FEATURE_CACHE[t][1] for t in texts], dtype=np.float64)
    return terms, feats.reshape(len(texts), len(DENSE_NAMES))


def _design(
    vocab: Vocabulary,
    terms: Sequence[Mapping[str, int]],
    feats: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    clip: float | np.ndarray = 0.0,
) -> Any:
    from scipy import sparse

    indptr = [0]
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for t in terms:
        idx, w = vocab.encode(t)
        cols.append(idx)
        vals.append(w)
        indptr.append(indptr[-1] + idx.size)
    x_terms = sparse.csr_matrix(
        (np.concatenate(vals), np.concatenate(cols), np.array(indptr)), shape=(len(terms), len(vocab))
    )
    z = standardise(feats, mean, scale, clip) * DENSE_WEIGHT
    return sparse.hstack([x_terms, sparse.csr_matrix(z)], format="csr")


def fit_vocabulary(texts: Sequence[str]) -> Vocabulary:
    """One vocabulary for both models, so routing encodes each prompt once."""
    terms, _ = featurize(texts)
    return Vocabulary.fit(terms, min_df=2, max_terms=MAX_TERMS)


def _fit(
    texts: Sequence[str],
    y: np.ndarray,
    weights: np.ndarray,
    c: float,
    classes: list[str],
    soft: bool = False,
    vocab: Vocabulary | None = None,
    clip: float | np.ndarray = 0.0,
    groups: Sequence[str] | None = None,
) -> LinearModel:
    """One logistic model. ``groups``: each row's benchmark, fitted as a fixed effect
    (a column per group, dropped from the model that is kept; see ``fit_small_ok``)."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    terms, feats = featurize(texts)
    if vocab is None:
        vocab = Vocabulary.fit(terms, min_df=2, max_terms=MAX_TERMS)
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0)
    scale[scale < 1e-9] = 1.0
    x = _design(vocab, terms, feats, mean, scale, clip)
    n_cols = x.shape[1]
    if groups is not None:
        names = sorted(set(groups))
        col = {g: i for i, g in enumerate(names)}
        fe = sparse.csr_matrix(
            (np.full(len(groups), GROUP_SCALE), (np.arange(len(groups)), [col[g] for g in groups])),
            shape=(len(groups), len(names)))
        x = sparse.hstack([x, fe], format="csr")
    if soft:
        # A soft label p becomes the row twice: as a 1 with weight p, as a 0 with weight 1-p.
        x = sparse.vstack([x, x], format="csr")
        target = np.r_[np.ones(len(y)), np.zeros(len(y))]
        w = np.r_[y * weights, (1.0 - y) * weights]
        keep = w > 0
        x, target, w = x[keep], target[keep], w[keep]
    else:
        target, w = y, weights
    # newton-cg converges in ~10 steps here where lbfgs needs 100+; one thread,
    # because BLAS threads fighting over a shared CPU only slow it down.
    lr = LogisticRegression(C=c, solver="newton-cg", max_iter=200, tol=1e-4)
    with threadpool_limits(limits=1):
        lr.fit(x, target, sample_weight=w)
    if soft or len(classes) == 2:
        coef, intercept = lr.coef_[:1], lr.intercept_[:1]
        classes = ["0", "1"] if soft else classes
        if groups is not None:
            # A prompt at routing time belongs to no training benchmark: it gets the
            # mean benchmark's level, each benchmark weighted by its rows.
            effects = coef[0, n_cols:] * GROUP_SCALE
            share = np.bincount([col[g] for g in groups], minlength=len(names)) / len(groups)
            coef, intercept = coef[:, :n_cols], intercept + float(effects @ share)
    else:
        order = [list(lr.classes_).index(k) for k in classes]
        coef, intercept = lr.coef_[order], lr.intercept_[order]
    return LinearModel(vocab, coef, intercept, classes, mean, scale, DENSE_WEIGHT, clip)


def cap_rows(rows: Sequence[KindRow], cap: int, seed: int) -> list[KindRow]:
    """At most ``cap`` rows per (source, task): no single benchmark drowns the others."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[KindRow]] = defaultdict(list)
    for r in rows:
        groups[(r.source, r.task)].append(r)
    out: list[KindRow] = []
    for key in sorted(groups):
        g = groups[key]
        out.extend(rng.sample(g, cap) if len(g) > cap else g)
    return out


def kind_clip() -> np.ndarray:
    """Per dense feature, the bound of its standardised value in the kind model
    (length and the tokenizer features: ~0, see KIND_LENGTH_CLIP)."""
    bound = np.full(len(DENSE_NAMES), DENSE_CLIP)
    # Length, and the tokenizer features (p_small_ok's: as kind cues they only
    # told Chinese from English, which cjk_share does, and called "hi" writing).
    for name in ("log_tokens", "log_tokens_per_char", "non_ascii_share"):
        bound[DENSE_NAMES.index(name)] = KIND_LENGTH_CLIP
    return bound


def fit_kind(rows: Sequence[KindRow], seed: int = SEED, vocab: Vocabulary | None = None) -> LinearModel:
    rows = cap_rows(rows, KIND_CAP_PER_TASK, seed)
    present = sorted({r.kind.value for r in rows})
    y = np.array([r.kind.value for r in rows])
    counts = Counter(y.tolist())
    # Balanced classes: a kind with 100 examples weighs as much as one with 3,000.
    w = np.array([len(rows) / (len(counts) * counts[v]) for v in y])
    # Clipped dense features: a prompt longer than any of its kind in training is not
    # pushed ever further towards the kinds whose examples are long (summary, extraction).
    # p_small_ok keeps them unclipped: on held-out benchmarks clipping did not help it.
    return _fit([r.prompt for r in rows], y, w, KIND_C, present, vocab=vocab, clip=kind_clip())


def fit_small_ok(
    rows: Sequence[OkRow], seed: int = SEED, vocab: Vocabulary | None = None
) -> LinearModel:
    del seed  # lbfgs is deterministic; kept for a uniform signature
    y = np.array([r.small_ok for r in rows], dtype=np.float64)
    # Each source weighs the same in total, whatever its size.
    per = Counter(r.source for r in rows)
    w = np.array([len(rows) / (len(per) * per[r.source]) for r in rows])
    # Benchmarks as fixed effects: part of how hard a benchmark is on the whole goes
    # into its own column, so the words and structure features learn more of what
    # makes one prompt harder than another *within* a benchmark. Without them, words
    # that merely name a hard benchmark's topic carried the fit (see GROUP_SCALE).
    groups = [f"{r.source}/{r.task}" for r in rows]
    return _fit([r.prompt for r in rows], y, w, SMALL_OK_C, ["0", "1"], soft=True, vocab=vocab,
                groups=groups if len(set(groups)) > 1 else None, clip=small_ok_clip())


def small_ok_clip() -> np.ndarray:
    """p_small_ok's bounds: none, but on the tokenizer features, whose tails (a
    script no training prompt used) would otherwise decide alone."""
    bound = np.zeros(len(DENSE_NAMES))
    for name in ("log_tokens_per_char", "non_ascii_share"):
        bound[DENSE_NAMES.index(name)] = SMALL_OK_TOKENIZER_CLIP
    return bound


def fit_models(
    kind_rows: Sequence[KindRow], ok_rows: Sequence[OkRow], label_rows: Sequence[OkRow] = ()
) -> tuple[LinearModel | None, LinearModel | None, LabelCorrection | None]:
    """Both models on one shared vocabulary, as ``tierfleet train`` ships them.

    ``label_rows``: p_small_ok labels from the user's own traffic. With a general
    model to correct (``ok_rows``, the dev data), they do not join its fit, where
    a few hundred rows would be drowned by thousands or overfit twenty thousand
    weights; they fit a ``LabelCorrection`` on top of it instead, scored by a model
    that never saw them. Without ``ok_rows`` they are the training data.

    The benchmark's leave-one-benchmark-out folds call this too, so what it
    measures is what the command writes. A model with too few rows (or one class
    only) comes back as None: the caller keeps the current one.
    """
    if not ok_rows:
        ok_rows, label_rows = list(label_rows), ()
    fit_k = len(kind_rows) >= MIN_ROWS and len({r.kind for r in kind_rows}) >= 2
    fit_o = len(ok_rows) >= MIN_ROWS and len({r.small_ok > 0.5 for r in ok_rows}) == 2
    vocab = None
    if fit_k and fit_o:
        texts = [r.prompt for r in cap_rows(kind_rows, KIND_CAP_PER_TASK, SEED)]
        vocab = fit_vocabulary(texts + [r.prompt for r in ok_rows])
    kind = fit_kind(kind_rows, vocab=vocab) if fit_k else None
    small_ok = fit_small_ok(ok_rows, vocab=vocab) if fit_o else None
    correction = correction_for(small_ok, label_rows) if small_ok is not None else None
    return kind, small_ok, correction


def correction_for(model: LinearModel, label_rows: Sequence[OkRow]) -> LabelCorrection | None:
    """The correction ``label_rows`` fit on ``model``, or None when they are too few."""
    return fit_correction(model, label_rows) if len(label_rows) >= MIN_ROWS else None


def fit_correction(model: LinearModel, rows: Sequence[OkRow]) -> LabelCorrection:
    terms, feats = featurize([r.prompt for r in rows])
    encoded = model.encode(terms)
    z = model.decision(terms, feats, encoded)[:, 0]
    y = np.array([r.small_ok for r in rows], dtype=np.float64)
    return LabelCorrection.fit(z, feats[:, DENSE_NAMES.index("log_tokens")], y, encoded, len(model.vocab))


# -- the command ------------------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train(
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    with_dev: bool = False,
) -> dict[str, Any]:
    """Train both models and write them to ``out`` (default: the artifacts folder in use)."""
    target = Path(out) if out else artifacts_dir()
    current = artifacts_dir()
    kind_rows: list[KindRow] = []
    ok_rows: list[OkRow] = []
    label_ok: list[OkRow] = []
    sources: dict[str, Any] = {}
    problems: list[str] = []
    if labels is None or with_dev:
        dd = find_data_dir(data_dir)
        kind_rows += load_kind_rows(dd) + synth_rows()
        ok_rows += load_ok_rows(dd)
        sources["dev"] = {
            "dir": f"{dd.parent.name}/{dd.name}",
            "files": {p.name: _sha(p) for p in sorted(dd.glob("*.jsonl"))},
        }
    if labels is not None:
        uk, uo, problems = load_user_labels(labels)
        kind_rows += uk
        label_ok = uo
        sources["labels"] = {"file": str(labels), "sha": _sha(Path(labels)), "kind_rows": len(uk),
                             "small_ok_rows": len(uo), "skipped": len(problems)}
    target.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out": str(target), "sources": sources, "problems": problems[:20]}

    kind_model, ok_model, correction = fit_models(kind_rows, ok_rows, label_ok)
    if ok_model is not None and not ok_rows:
        ok_rows = label_ok  # no dev data: the labels were the training rows
    stale = target / CORRECTION_FILE
    if correction is not None:
        correction.save(stale)
        summary["correction"] = {"labels": correction.n_labels, "recalibration": [
            round(float(c), 4) for c in correction.coef]}
    elif stale.exists() and (ok_model is not None or current.resolve() != target.resolve()):
        stale.unlink()  # a correction belongs to the model it was fitted on
    if kind_model is not None:
        kind_model.save(target / KIND_FILE)
        summary["kind"] = {
            "rows": len(kind_rows),
            "per_kind": dict(sorted(Counter(r.kind.value for r in kind_rows).items())),
        }
    else:
        why = f"{len(kind_rows)} rows, {len({r.kind for r in kind_rows})} kinds"
        summary["kind"] = _keep(current, target, KIND_FILE, why)
    if ok_model is not None:
        ok_model.save(target / SMALL_OK_FILE)
        summary["small_ok"] = {
            "rows": len(ok_rows),
            "kinds": small_ok_kinds(ok_rows),
            "mean_label": round(float(np.mean([r.small_ok for r in ok_rows])), 4),
            "small_models": SMALL_MODELS,
            "large_models": LARGE_MODELS,
        }
    else:
        summary["small_ok"] = _keep(current, target, SMALL_OK_FILE, f"{len(ok_rows)} rows")
    meta = {
        "seed": SEED,
        "kind_c": KIND_C,
        "small_ok_c": SMALL_OK_C,
        "small_ok_group_scale": GROUP_SCALE,
        "max_terms": MAX_TERMS,
        "kind_cap_per_task": KIND_CAP_PER_TASK,
        "kind_dense_clip": DENSE_CLIP,
        "kind_length_clip": KIND_LENGTH_CLIP,
        "dense_features": list(DENSE_NAMES),
        "task_kinds": {k: v.value for k, v in TASK_KINDS.items()},
        "label_kinds": {k: v.value for k, v in LABEL_KINDS.items()},
        **summary,
    }
    (target / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def small_ok_kinds(rows: Sequence[OkRow]) -> list[str] | None:
    """The kinds p_small_ok has labels for; None when a row's kind is unknown (a
    user's label without one), so that no kind is ruled out."""
    kinds: set[str] = set()
    for r in rows:
        k = TASK_KINDS.get(r.task)
        if k is not None:
            kinds.add(k.value)
        elif r.task in LEARNED_KINDS:
            kinds.add(r.task)  # a user's label that names its kind
        else:
            return None
    return sorted(kinds)


def _keep(current: Path, target: Path, name: str, why: str) -> dict[str, Any]:
    src = current / name
    if src.exists() and src.resolve() != (target / name).resolve():
        shutil.copyfile(src, target / name)
    return {"kept": str(src), "why": f"too few labels ({why}); the current model is kept"}
