"""Worker heartbeats and the stall watchdog: how the fleet tells a live node from a dead one.

Every worker node writes ``P:hb:{node}`` every ``heartbeat_s``, naming the
queues it consumes, the delivery tags it holds and the jobs they carry; the key expires after
``dead_after_s``, so a node that stops beating drops out by itself. The reaper
reads the live set to find deliveries no live node claims, and the dispatcher
reads it to count workers per tier.

Importing this module has no side effect (no config read, no Celery app), so
producers, the reaper and tests can use it without becoming a worker.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import redis

from . import keys
from .config import FleetConfig

__all__ = ["Watchdog", "heartbeat_key", "holds", "live_workers", "write_heartbeat"]

# How long after an owner took a job its node's heartbeat may still not list it: the beat's
# snapshot of held requests is taken just before the heartbeat is stamped, and both times
# come from the owner's own clock.
LIST_GRACE_S = 1.0


def heartbeat_key(config: FleetConfig, node: str) -> str:
    return keys.heartbeat(config, node)


def write_heartbeat(client: redis.Redis, config: FleetConfig, node: str, queues: list[str],
                    tags: Iterable[str], concurrency: int,
                    pids: Iterable[int] | None = None,
                    jobs: Iterable[str] | None = None) -> None:
    """``pids``: the node's live processes (main and pool children), so a lease held by a
    pool child that died can be taken over while the node itself lives on. ``jobs``: the
    ids of the jobs its deliveries carry, so a lease or a call note that a live process
    left behind (its release lost with Redis's last second) is not taken for work in
    progress."""
    body: dict[str, Any] = {
        "node": node, "queues": queues, "tags": sorted(set(tags)), "pid": os.getpid(),
        "host": socket.gethostname(), "concurrency": concurrency,
    }
    if pids is not None:
        body["pids"] = sorted({os.getpid(), *pids})
    if jobs is not None:
        body["jobs"] = sorted(set(jobs))
    body["ts"] = time.time()  # after the snapshot of what it holds (see LIST_GRACE_S)
    ttl_ms = int(config.reliability.dead_after_s * 1000)
    client.set(heartbeat_key(config, node), json.dumps(body), px=ttl_ms)


def live_workers(client: redis.Redis, config: FleetConfig) -> list[dict[str, Any]]:
    found = list(client.scan_iter(match=heartbeat_key(config, "*"), count=500))
    if not found:
        return []
    return [json.loads(v) for v in client.mget(found) if v]


def holds(client: redis.Redis, config: FleetConfig, owner: str, job_id: str,
          since: float | None) -> bool:
    """Whether ``owner`` (``node|pid|thread``, as leases and call notes name it) may still
    be running ``job_id``, which it took at ``since`` (its own clock): its node beats,
    lists the pid among its processes, and lists the job or was stamped too soon after
    ``since`` to list it. A heartbeat without pids or jobs (a node from before they were
    listed) or an unknown ``since`` counts as holding it."""
    node, _, rest = owner.partition("|")
    pid_text = rest.partition("|")[0]
    pid = int(pid_text) if pid_text.isdigit() else None
    raw = client.get(heartbeat_key(config, node))
    if not raw:
        return False
    body = json.loads(raw)
    pids = body.get("pids")
    if not (pid is None or pids is None or pid in pids):
        return False
    jobs = body.get("jobs")
    if jobs is None or since is None or job_id in jobs:
        return True
    return float(body.get("ts") or 0) < float(since) + LIST_GRACE_S


class Watchdog:
    """Notices a consumer that has gone quiet while its queue fills."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._since: float | None = None
        self._done = -1

    def stalled(self, waiting: int, held: int, done: int = 0, now: float | None = None) -> bool:
        """``done``: tasks this node has finished so far; any progress resets the clock."""
        progressed, self._done = done != self._done, done
        if self.limit_s <= 0 or waiting == 0 or held > 0 or progressed:
            self._since = None
            return False
        now = time.monotonic() if now is None else now
        if self._since is None:
            self._since = now
        return now - self._since >= self.limit_s
