"""``tierfleet train --from-fleet``: a candidate policy version from the fleet's own labels.

The labels of the period are split by job id (sticky: ``learning.holdout`` of the
jobs are never trained on) into training and held-out rows. The candidate is a
new version folder (``versions.py``) built on the current version:

- by default its models are the current ones and the fleet's p_small_ok labels
  fit a ``LabelCorrection`` on top (``correction.py``: a few hundred labels move a
  recalibration and a neighbour residual, not twenty thousand term weights);
  seconds, so it can run every night;
- ``full=True`` retrains both models on the dev data plus the labels
  (``training.train(labels=..., with_dev=True)``), kind labels included.

Then candidate and current are evaluated on the held-out rows (``evaluate.py``)
and the manifest records both, the gate's verdict and where the labels came from.
Nothing is promoted here: ``tierfleet policy promote`` starts the rollout.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from ..config import FleetConfig
from ..labels import Label, LabelStore
from .evaluate import EvalRow, compare, evaluate
from .models import CORRECTION_FILE, KIND_FILE, META_FILE, SMALL_OK_FILE, load_models
from .versions import PolicyVersions, Rollout

__all__ = ["eval_rows", "file_candidate", "held_out", "split_labels", "train_candidate",
           "train_from_fleet"]


def held_out(job_id: str, share: float) -> bool:
    return (zlib.crc32(f"holdout|{job_id}".encode()) % 10_000) < share * 10_000


def split_labels(labels: Sequence[Label], share: float) -> tuple[list[Label], list[Label]]:
    train = [lb for lb in labels if not held_out(lb.job_id, share)]
    test = [lb for lb in labels if held_out(lb.job_id, share)]
    return train, test


def eval_rows(labels: Sequence[Label]) -> list[EvalRow]:
    """Labels that say how the small tier did (shadow, escalation, feedback on a small answer)."""
    return [EvalRow(lb.prompt, float(lb.small_score),
                    1.0 if lb.large_score is None else float(lb.large_score), lb.tier, lb.true_kind)
            for lb in labels if lb.prompt and lb.routed_small and lb.small_score is not None]


def train_candidate(config: FleetConfig, labels: Sequence[Label], *, parent: str,
                    versions: PolicyVersions | None = None, full: bool = False,
                    data_dir: str | os.PathLike[str] | None = None,
                    source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, evaluate and file one candidate version; returns its manifest."""
    from .training import MIN_ROWS, OkRow, fit_correction, train

    versions = versions or PolicyVersions(config)
    train_lb, test_lb = split_labels(labels, config.learning.holdout)
    rows = [r for r in (lb.training_row() for lb in train_lb) if r is not None]
    version, folder = versions.new_folder()
    parent_dir = versions.folder(parent)
    detail: dict[str, Any] = {}
    if full:
        with tempfile.TemporaryDirectory() as tmp:  # the prompts never stay on disk
            path = Path(tmp) / "labels.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                            encoding="utf-8")
            summary = train(out=folder, data_dir=data_dir, labels=path, with_dev=True)
        detail = {"mode": "full", "kind": summary.get("kind"), "correction": summary.get("correction")}
    else:
        for name in (KIND_FILE, SMALL_OK_FILE, META_FILE):
            if (parent_dir / name).exists():
                shutil.copyfile(parent_dir / name, folder / name)
        base = load_models(str(parent_dir)).small_ok
        ok = [OkRow(r["prompt"], float(r["small_ok"]), "fleet", "", {}) for r in rows if "small_ok" in r]
        if base is not None and len(ok) >= MIN_ROWS and len({r.small_ok > 0.5 for r in ok}) == 2:
            corr = fit_correction(base, ok)
            corr.save(folder / CORRECTION_FILE)
            detail = {"mode": "correction", "labels": corr.n_labels,
                      "recalibration": [round(float(c), 4) for c in corr.coef]}
        else:
            detail = {"mode": "correction", "labels": 0,
                      "why": f"{len(ok)} p_small_ok labels (need {MIN_ROWS}, both outcomes): "
                             "the parent's models unchanged"}
    held = eval_rows(test_lb)
    info = {"total": len(labels), "trained": len(rows), "held_out": len(held),
            "by_source": dict(Counter(lb.source for lb in labels)), **(source or {})}
    return file_candidate(config, versions, version, parent, held, detail, info)


def file_candidate(config: FleetConfig, versions: PolicyVersions, version: str, parent: str,
                   held: Sequence[EvalRow], training: dict[str, Any],
                   labels: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the models in ``version``'s folder against ``parent`` on ``held`` and write
    its manifest, with the gate's verdict (``evaluate.compare``)."""
    cand_eval = evaluate(load_models(str(versions.folder(version))), config, held)
    cur_eval = evaluate(load_models(str(versions.folder(parent))), config, held)
    ok_gate, reasons = compare(cand_eval, cur_eval, config.learning.tolerance)
    manifest = {
        "version": version, "parent": parent, "created": time.time(), "status": "candidate",
        "training": training, "labels": labels,
        "evaluation": {"candidate": cand_eval.to_json(), "current": cur_eval.to_json(),
                       "gate": "pass" if ok_gate else "refused", "reasons": reasons,
                       "tolerance": config.learning.tolerance},
    }
    versions.write_manifest(version, manifest)
    return manifest


def train_from_fleet(config: FleetConfig, client: redis.Redis, *, since_days: float = 30.0,
                     full: bool = False, data_dir: str | os.PathLike[str] | None = None,
                     versions: PolicyVersions | None = None) -> dict[str, Any]:
    """A candidate from the labels of the last ``since_days``, built on the current version."""
    versions = versions or PolicyVersions(config)
    now = time.time()
    labels = LabelStore(client, config).since(now - since_days * 86_400, now)
    parent = Rollout(client, config, versions).state()["current"]
    return train_candidate(config, labels, parent=parent, versions=versions, full=full,
                           data_dir=data_dir, source={"since_days": since_days})
