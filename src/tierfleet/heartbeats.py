"""Worker heartbeats and the stall watchdog: how the fleet tells a live node from a dead one.

Every worker node writes ``P:hb:{node}`` every ``heartbeat_s``, naming the
queues it consumes and the delivery tags it holds; the key expires after
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

__all__ = ["Watchdog", "heartbeat_key", "is_alive", "live_workers", "write_heartbeat"]


def heartbeat_key(config: FleetConfig, node: str) -> str:
    return keys.heartbeat(config, node)


def write_heartbeat(client: redis.Redis, config: FleetConfig, node: str, queues: list[str],
                    tags: Iterable[str], concurrency: int,
                    pids: Iterable[int] | None = None) -> None:
    """``pids``: the node's live processes (main and pool children), so a lease held by a
    pool child that died can be taken over while the node itself lives on."""
    body = {
        "node": node, "queues": queues, "tags": sorted(set(tags)), "pid": os.getpid(),
        "host": socket.gethostname(), "concurrency": concurrency, "ts": time.time(),
    }
    if pids is not None:
        body["pids"] = sorted({os.getpid(), *pids})
    ttl_ms = int(config.reliability.dead_after_s * 1000)
    client.set(heartbeat_key(config, node), json.dumps(body), px=ttl_ms)


def live_workers(client: redis.Redis, config: FleetConfig) -> list[dict[str, Any]]:
    found = list(client.scan_iter(match=heartbeat_key(config, "*"), count=500))
    if not found:
        return []
    return [json.loads(v) for v in client.mget(found) if v]


def is_alive(client: redis.Redis, config: FleetConfig, node: str, pid: int | None) -> bool:
    """Whether ``node`` beats, and (when its heartbeat lists them) ``pid`` is one of its processes."""
    raw = client.get(heartbeat_key(config, node))
    if not raw:
        return False
    pids = json.loads(raw).get("pids")
    return pid is None or pids is None or pid in pids


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
