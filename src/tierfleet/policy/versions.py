"""Policies as versioned artifacts, and the staged rollout that switches between them.

Why: a retrained router is a guess about traffic until it has routed some. So a
candidate is a folder of its own (``{learning.policy_dir}/v0001/``: the model
files ``tierfleet train`` writes plus ``manifest.json``: parent, labels, the
offline evaluation, status), the fleet's rollout state lives in Redis
(``P:policy:rollout``: current, candidate, phase, share), and a candidate first
runs in ``shadow`` (``learning.shadow_stage``: it routes nothing, the dispatcher
logs what it would have done, ``policy/shadowlog.py``), then takes a growing
share of jobs (``learning.rollout``, 5% -> 50% -> 100%), sticky per job id so a
job and its redeliveries meet one policy. Leaving shadow is refused when the
candidate would raise the estimated cost per request by more than
``ledger.alert_cost_increase`` (:meth:`Rollout.shadow_guard`); an alert on the
candidate's live routes rolls it back (:meth:`Rollout.guard`). ``shipped`` names
the artifacts the package ships: the version every fleet starts on.
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from .. import keys
from ..config import FleetConfig
from .engine import Policy
from .models import artifacts_dir, load_models, shipped_dir
from .shadowlog import ShadowLog
from .stages import Stage

SHIPPED = "shipped"
MANIFEST = "manifest.json"
SHADOW, LIVE = "shadow", "live"  # a candidate's phases


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class PolicyVersions:
    """The folders of every trained version under ``learning.policy_dir``."""

    def __init__(self, config: FleetConfig, root: str | Path | None = None) -> None:
        self.root = Path(root or config.learning.policy_dir)

    def folder(self, version: str) -> Path:
        if version == SHIPPED:
            return artifacts_dir()
        return self.root / version

    def exists(self, version: str) -> bool:
        return version == SHIPPED or (self.folder(version) / MANIFEST).exists()

    def new_folder(self) -> tuple[str, Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        n = 1 + max((int(p.name[1:]) for p in self.root.glob("v[0-9]*") if p.name[1:].isdigit()),
                    default=0)
        version = f"v{n:04d}"
        path = self.root / version
        path.mkdir()
        return version, path

    def manifest(self, version: str) -> dict[str, Any]:
        if version == SHIPPED:
            return {"version": SHIPPED, "status": "shipped", "folder": str(self.folder(SHIPPED))}
        path = self.folder(version) / MANIFEST
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def write_manifest(self, version: str, manifest: dict[str, Any]) -> None:
        path = self.folder(version) / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)

    def update(self, version: str, **fields: Any) -> None:
        if version != SHIPPED and self.exists(version):
            self.write_manifest(version, {**self.manifest(version), **fields})

    def list(self) -> list[dict[str, Any]]:
        out = [self.manifest(SHIPPED)]
        if self.root.exists():
            for p in sorted(self.root.glob("v[0-9]*")):
                if (p / MANIFEST).exists():
                    out.append(self.manifest(p.name))
        return out


def in_share(job_id: str, share: float) -> bool:
    """Sticky per job id: the same id falls on the same side of every share."""
    return share > 0 and (zlib.crc32(f"rollout|{job_id}".encode()) % 10_000) < share * 10_000


class Rollout:
    """The fleet's policy state in Redis: the current version, a candidate, its phase
    (``shadow``: logged, not acted on; ``live``: routing its share) and its share.

    ``start`` -> (shadow) -> ``advance`` -> 5% -> 50% -> 100% -> current; ``rollback``
    drops the candidate from any phase. Every step is refused (``ValueError``) when its
    gate says no, unless forced: the offline evaluation for ``start``, the shadow
    counterfactual's cost for leaving shadow.
    """

    def __init__(self, client: redis.Redis, config: FleetConfig,
                 versions: PolicyVersions | None = None) -> None:
        self.redis = client
        self.config = config
        self.key = keys.policy_rollout(config)
        self.versions = versions or PolicyVersions(config)
        self.stages = list(config.learning.rollout) or [1.0]

    def state(self) -> dict[str, Any]:
        raw = {_s(k): _s(v) for k, v in self.redis.hgetall(self.key).items()}
        candidate = raw.get("candidate") or None
        return {
            "current": raw.get("current") or SHIPPED,
            "candidate": candidate,
            # A state written before phases existed had only live candidates.
            "phase": (raw.get("phase") or LIVE) if candidate else "",
            "share": float(raw.get("share") or 0.0),
            "stage": int(raw.get("stage") or 0),
            "previous": raw.get("previous") or None,
            "reason": raw.get("reason") or "",
            "updated": float(raw.get("updated") or 0.0),
        }

    def _write(self, **fields: Any) -> dict[str, Any]:
        self.redis.hset(self.key, mapping={k: "" if v is None else str(v)
                                           for k, v in {**fields, "updated": time.time()}.items()})
        return self.state()

    def start(self, candidate: str, reason: str = "", *, force: bool = False) -> dict[str, Any]:
        """Route the first stage's share of jobs with ``candidate``; refused when its offline
        evaluation failed the gate (``fleet_training``), unless ``force``."""
        if not self.versions.exists(candidate):
            raise ValueError(f"unknown policy version {candidate!r}")
        if candidate == self.state()["current"]:
            raise ValueError(f"{candidate} is already the current policy")
        gate = self.versions.manifest(candidate).get("evaluation", {})
        if gate.get("gate") == "refused" and not force:
            raise ValueError(f"{candidate} failed its evaluation: " + "; ".join(gate.get("reasons", [])))
        if self.config.learning.shadow_stage:
            # A fresh log: an earlier rollout's decisions are not this one's evidence.
            self.shadow_log().clear(candidate)
            self.versions.update(candidate, status="shadow", share=0.0)
            return self._write(candidate=candidate, phase=SHADOW, share=0.0, stage=0, reason=reason)
        self.versions.update(candidate, status="rolling out", share=self.stages[0])
        return self._write(candidate=candidate, phase=LIVE, share=self.stages[0], stage=0,
                           reason=reason)

    def advance(self, reason: str = "", *, force: bool = False) -> dict[str, Any]:
        """The next share (from shadow: the first); after the last, the candidate becomes
        the current policy. Leaving shadow is refused on :meth:`shadow_guard`'s alerts,
        unless ``force``."""
        st = self.state()
        cand = st["candidate"]
        if not cand:
            raise ValueError("no candidate is rolling out")
        if st["phase"] == SHADOW:
            alerts = self.shadow_guard()
            if alerts and not force:
                raise ValueError(f"{cand} stays in shadow: "
                                 + "; ".join(a.reason for a in alerts) + " (--force overrides)")
            self.versions.update(cand, status="rolling out", share=self.stages[0])
            return self._write(phase=LIVE, share=self.stages[0], stage=0, reason=reason)
        nxt = st["stage"] + 1
        if nxt < len(self.stages) and self.stages[st["stage"]] < 1.0:
            self.versions.update(cand, share=self.stages[nxt])
            return self._write(share=self.stages[nxt], stage=nxt, reason=reason)
        self.versions.update(cand, status="current", promoted_at=time.time())
        self.versions.update(st["current"], status="retired")
        return self._write(current=cand, candidate=None, phase="", share=0.0, stage=0,
                           previous=st["current"], reason=reason or "promoted")

    def rollback(self, reason: str) -> dict[str, Any]:
        """Drop the candidate; with none, go back to the previous current version."""
        st = self.state()
        if st["candidate"]:
            self.versions.update(st["candidate"], status="rolled back", rollback_reason=reason)
            return self._write(candidate=None, phase="", share=0.0, stage=0,
                               reason=f"rolled back: {reason}")
        if st["previous"]:
            self.versions.update(st["current"], status="rolled back", rollback_reason=reason)
            self.versions.update(st["previous"], status="current")
            return self._write(current=st["previous"], previous=None, reason=f"rolled back: {reason}")
        raise ValueError("nothing to roll back: no candidate and no previous version")

    def shadow_log(self) -> ShadowLog:
        return ShadowLog(self.redis, self.config)

    def shadow_guard(self) -> list[Any]:
        """Alerts on the shadow candidate's counterfactual: its estimated cost per request
        above the current policy's by more than ``ledger.alert_cost_increase``. Too few
        decisions (under ``routequality.MIN_REQUESTS``) say nothing, so raise none."""
        from ..routequality import MIN_REQUESTS, Alert

        st = self.state()
        cand = st["candidate"]
        if not cand or st["phase"] != SHADOW:
            return []
        summary = self.shadow_log().summary(cand)
        rise, bound = summary.cost_change, self.config.ledger.alert_cost_increase
        if summary.decisions < MIN_REQUESTS or rise is None or rise <= bound:
            return []
        name = f"{cand} vs {st['current']} (shadow)"
        return [Alert("cost_per_request", name, rise, bound,
                      f"{name}: estimated cost per request would rise {rise:.0%} "
                      f"(${summary.cost_per_request or 0:.6f} -> "
                      f"${summary.cand_cost_per_request or 0:.6f} over {summary.decisions} "
                      f"jobs), above {bound:.0%}")]

    def guard(self, alerts: Sequence[Any]) -> dict[str, Any] | None:
        """Automatic rollback: any alert while a candidate rolls out drops it."""
        if alerts and self.state()["candidate"]:
            return self.rollback("; ".join(getattr(a, "reason", str(a)) for a in alerts))
        return None


class PolicyPicker:
    """Which policy routes a job: the current version, or the candidate for its share."""

    def __init__(self, config: FleetConfig, client: redis.Redis | None,
                 stages: Sequence[Stage] | None = None, clock: Any = time.time) -> None:
        self.config = config
        self.stages = stages
        self.clock = clock
        self.versions = PolicyVersions(config)
        self.rollout = Rollout(client, config, self.versions) if (
            client is not None and config.learning.versions) else None
        self._policies: dict[str, Policy] = {}
        self._state: dict[str, Any] = {"current": SHIPPED, "candidate": None, "phase": "",
                                       "share": 0.0}
        self._at = -1e18
        if self.rollout is None:
            # Unversioned: the artifacts in use, named by their folder.
            d = artifacts_dir()
            self._fixed = SHIPPED if d == shipped_dir() else d.name
        else:
            self._fixed = None

    def policy(self, version: str) -> Policy:
        p = self._policies.get(version)
        if p is None:
            models = None
            if self._fixed is None:
                models = load_models(str(self.versions.folder(version)))
            p = self._policies[version] = Policy(self.config, self.stages, models)
        return p

    def refresh(self, force: bool = False) -> None:
        if self.rollout is None:
            return
        now = self.clock()
        if force or now - self._at >= self.config.learning.versions_reload_s:
            self._at = now
            with contextlib.suppress(redis.RedisError):  # keep routing on the last state known
                self._state = self.rollout.state()

    def current_policy(self) -> Policy:
        return self.policy(self._fixed or self._state["current"])

    def shadow_candidate(self) -> str | None:
        """The candidate in shadow (asked about every job, acted on for none), if any."""
        if self._fixed is not None or self._state.get("phase") != SHADOW:
            return None
        return self._state.get("candidate") or None

    def pick(self, job_id: str) -> tuple[str, Policy]:
        if self._fixed is not None:
            return self._fixed, self.policy(self._fixed)
        cand = self._state.get("candidate")
        if cand and self._state.get("phase") != SHADOW and in_share(
                job_id, float(self._state.get("share") or 0.0)):
            return cand, self.policy(cand)
        cur = self._state["current"]
        return cur, self.policy(cur)
