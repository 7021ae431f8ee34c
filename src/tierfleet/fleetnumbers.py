"""One definition of each fleet number that ``tierfleet status``, the API's ``/v1/status``,
Prometheus and the reports show, so they can never disagree.

- **nodes**: worker nodes (one ``celery worker`` main process each, one heartbeat key)
  with a fresh heartbeat, per tier they consume.
- **processes**: the pool processes of those nodes (each node's concurrency), per tier:
  how many jobs of that tier can run at once.
- **held**: deliveries a node holds (received, running or prefetched, not yet acked).
- **busy**: a node holding at least one delivery; a node holding none is **idle**.
- **parked**: a job waiting for an allowed tier to come back, with its next try
  (``next_try_in_s``) and how many tries it has left before it becomes a dead letter
  (``tries_left``, the next one included).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from .config import FleetConfig

__all__ = ["parked_rows", "status_view", "tier_workers", "tries_left", "worker_rows"]


def worker_rows(live: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per live node: its name, host, queues, processes, deliveries held, busy."""
    rows = []
    for w in live:
        held = len(w.get("tags") or [])
        rows.append({
            "node": w.get("node"), "host": w.get("host"), "queues": list(w.get("queues") or []),
            "processes": int(w.get("concurrency") or 1), "held": held, "busy": held > 0,
        })
    return sorted(rows, key=lambda r: str(r["node"]))


def tier_workers(live: Iterable[Mapping[str, Any]], tiers: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per tier: ``nodes``, ``processes``, ``busy_nodes`` (see the module doc)."""
    out = {t: {"nodes": 0, "processes": 0, "busy_nodes": 0} for t in tiers}
    for row in worker_rows(live):
        for q in row["queues"]:
            n = out.setdefault(q, {"nodes": 0, "processes": 0, "busy_nodes": 0})
            n["nodes"] += 1
            n["processes"] += row["processes"]
            n["busy_nodes"] += int(row["busy"])
    return out


def tries_left(parks: int, config: FleetConfig) -> int:
    """Tries a parked job still gets, the next one included: the runner dead-letters a
    job whose try fails while it has been parked ``max_attempts`` times already."""
    return max(config.reliability.max_attempts - parks + 1, 0)


def parked_rows(parked: Iterable[Mapping[str, Any]], config: FleetConfig) -> list[dict[str, Any]]:
    """Parked entries (``Parking.parked()``) with ``next_try_in_s`` and ``tries_left``."""
    rows = []
    for p in parked:
        parks = int(p.get("parks") or 0)
        rows.append({**p, "next_try_in_s": max(float(p.get("due_in_s") or 0.0), 0.0),
                     "tries_left": tries_left(parks, config)})
    return rows


def status_view(st: Mapping[str, Any], live: Iterable[Mapping[str, Any]],
                config: FleetConfig) -> dict[str, Any]:
    """The dispatcher's status with every number defined here: queues name ``nodes``,
    ``processes`` and ``busy_nodes`` (``workers`` stays, meaning processes, for old
    readers); worker rows name ``processes``, ``held`` and ``busy``; parked rows carry
    their next try and tries left."""
    live = list(live)
    per_tier = tier_workers(live, config.tiers)
    queues = [{**q, **per_tier.get(q["tier"], {}), "workers": per_tier.get(q["tier"], {})
               .get("processes", 0)} for q in st.get("queues", [])]
    return {**st, "queues": queues, "workers": worker_rows(live),
            "parked": parked_rows(st.get("parked", []), config), "as_of": time.time()}
