"""`tierfleet train --labels` and the label correction move decisions the way the labels say.

Synthetic traffic, no dev data: prompts about one topic were too hard for the
small model (small_ok 0), prompts about another were fine (1). After training,
a new prompt on the hard topic must get a lower p_small_ok than one on the easy
topic, and the policy must send it one tier up.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tierfleet.config import load_config
from tierfleet.jobs import Job, Kind
from tierfleet.policy import Models, Policy, Reader, load_models
from tierfleet.policy.correction import CORRECTION_FILE, LabelCorrection
from tierfleet.policy.training import KindRow, OkRow, fit_models, train

HARD = ["tensor", "eigenvalue", "manifold", "homology", "spectral", "lagrangian"]
EASY = ["weather", "breakfast", "holiday", "garden", "birthday", "picnic"]


def _prompt(rng: random.Random, topic: list[str]) -> str:
    a, b = rng.sample(topic, 2)
    return f"Tell me about the {a} and the {b} in a few words, please."


def _rows(n: int, seed: int, hard_ok: float, easy_ok: float) -> list[OkRow]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hard = i % 2 == 0
        y = hard_ok if hard else easy_ok
        out.append(OkRow(_prompt(rng, HARD if hard else EASY), y, "labels", "", {}))
    return out


def test_train_labels_file_moves_hard_topic_up(tmp_path: Path) -> None:
    rng = random.Random(1)
    lines = []
    for i in range(60):
        hard = i % 2 == 0
        lines.append({"prompt": _prompt(rng, HARD if hard else EASY), "kind": "chat",
                      "small_score": 0.1 if hard else 0.9, "large_score": 0.8})
    # A second kind, so the kind classifier has two classes to learn.
    lines += [{"prompt": f"Translate into French: good morning number {i}", "kind": "translation"}
              for i in range(20)]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    out = tmp_path / "model"
    summary = train(out=out, labels=labels)
    assert summary["small_ok"]["rows"] == 60
    models = load_models(str(out))
    assert models.small_ok is not None and not models.problems
    reader = Reader("learned", models)
    hard = reader.read("Tell me about the spectral and the homology in a few words, please.")
    easy = reader.read("Tell me about the picnic and the garden in a few words, please.")
    assert hard.p_small_ok < 0.5 < easy.p_small_ok
    policy = Policy(load_config(), models=models)
    small = policy.route(Job(prompt="Tell me about the picnic and the weather in a few words, please.",
                             kind=Kind.CHAT))
    big = policy.route(Job(prompt="Tell me about the manifold and the tensor in a few words, please.",
                           kind=Kind.CHAT))
    assert policy.fleet.rank[big.tier] > policy.fleet.rank[small.tier]
    assert any("p_small_ok" in r.text and "not enough" in r.text for r in big.reasons)


def test_correction_from_labels_moves_p_the_labelled_way(tmp_path: Path) -> None:
    # A general model whose labels say nothing about the topics (0.3 or 0.7 at random) ...
    noise = random.Random(4)
    base = [OkRow(r.prompt, noise.choice([0.3, 0.7]), "dev", "", {}) for r in _rows(80, 2, 0.0, 0.0)]
    kinds = [KindRow(r.prompt, Kind.CHAT, "t", "") for r in base] + [
        KindRow(f"Translate into German: see you at {i}", Kind.TRANSLATION, "t", "") for i in range(20)
    ]
    # ... and the user's traffic saying the hard topic needs the large model.
    labels = _rows(40, seed=3, hard_ok=0.0, easy_ok=1.0)
    kind, small, corr = fit_models(kinds, base, labels)
    assert kind is not None and small is not None and corr is not None
    assert corr.n_labels == 40
    plain = Reader("learned", Models(kind=kind, small_ok=small))
    fixed = Reader("learned", Models(kind=kind, small_ok=small, correction=corr))
    hard = "Tell me about the eigenvalue and the lagrangian in a few words, please."
    easy = "Tell me about the birthday and the holiday in a few words, please."
    assert fixed.read(hard).p_small_ok < plain.read(hard).p_small_ok - 0.2
    assert fixed.read(easy).p_small_ok > plain.read(easy).p_small_ok + 0.2
    assert fixed.read(hard).p_method == "learned + labels"
    # The batch path agrees with the single-decision path.
    batch = fixed.read_many([hard, easy])
    assert batch[0].p_small_ok == pytest.approx(fixed.read(hard).p_small_ok, abs=1e-9)
    assert batch[1].p_small_ok == pytest.approx(fixed.read(easy).p_small_ok, abs=1e-9)
    # Stored as plain arrays (no pickle) and read back to the same decisions.
    path = tmp_path / CORRECTION_FILE
    corr.save(path)
    with np.load(path, allow_pickle=False) as z:
        assert all(z[name].dtype != object for name in z.files)
    again = Reader("learned", Models(kind=kind, small_ok=small, correction=LabelCorrection.load(path)))
    assert again.read(hard).p_small_ok == pytest.approx(fixed.read(hard).p_small_ok, abs=1e-6)


def test_similarities_match_a_dense_dot_product() -> None:
    rng = np.random.default_rng(0)
    n_terms, docs = 50, []
    for _ in range(7):
        idx = np.sort(rng.choice(n_terms, size=6, replace=False))
        w = rng.random(6)
        docs.append((idx, w / np.linalg.norm(w)))
    y = rng.random(7)
    corr = LabelCorrection.fit(rng.normal(size=7), rng.random(7), y, docs, n_terms)
    dense = np.zeros((7, n_terms))
    for i, (idx, w) in enumerate(docs):
        dense[i, idx] = w
    q_idx = np.array([1, 5, 9, 20, 33])
    q_w = np.array([0.2, 0.4, 0.1, 0.7, 0.5])
    q = np.zeros(n_terms)
    q[q_idx] = q_w
    np.testing.assert_allclose(corr.similarities(q_idx, q_w), dense @ q)
    assert corr.similarities(np.zeros(0, dtype=np.int64), np.zeros(0)).shape == (7,)


def test_train_with_dev_writes_a_correction_and_a_retrain_without_labels_drops_it(tmp_path: Path) -> None:
    from tierfleet.policy.training import LARGE_MODELS, SMALL_MODELS

    # A stand-in dev folder: topic-blind scores (the small models win half the time).
    rng = random.Random(5)
    dev = tmp_path / "dev"
    dev.mkdir()
    with (dev / "dcrouter_train.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(80):
            win = float(rng.random() < 0.5)
            scores = {m: win for m in SMALL_MODELS["dcrouter"]} | {m: 1.0 for m in LARGE_MODELS["dcrouter"]}
            fh.write(json.dumps({"prompt": _prompt(rng, HARD if i % 2 else EASY), "task": "mmlu",
                                 "scores": scores}) + "\n")
    labels = tmp_path / "labels.jsonl"
    with labels.open("w", encoding="utf-8") as fh:
        for r in _rows(40, seed=6, hard_ok=0.0, easy_ok=1.0):
            fh.write(json.dumps({"prompt": r.prompt, "small_ok": r.small_ok}) + "\n")
    out = tmp_path / "model"
    summary = train(out=out, data_dir=dev, labels=labels, with_dev=True)
    assert summary["correction"]["labels"] == 40
    assert (out / CORRECTION_FILE).exists()
    models = load_models(str(out))
    assert models.correction is not None and not models.problems
    reader = Reader("learned", models)
    hard = reader.read("Tell me about the homology and the tensor in a few words, please.")
    easy = reader.read("Tell me about the garden and the holiday in a few words, please.")
    assert hard.p_method == "learned + labels"
    assert hard.p_small_ok < easy.p_small_ok - 0.3
    # Retrained on the dev data alone, the old correction would misfit the new model: gone.
    train(out=out, data_dir=dev)
    assert not (out / CORRECTION_FILE).exists()
