"""Accounting for fault runs: where every job is, and what the hosts and the ledger saw.

A fault test ends by asking, for every job whose submit returned: is it final? If not,
does a message for it exist anywhere (a tier's queue, kombu's ``unacked`` hash, the
parked record)? A non-final job with no message is *stuck*; a job that never becomes
final is *lost*. Both must be zero, and the tests print the counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tierfleet.config import FleetConfig
from tierfleet.lab.embedded import free_port, redis_server_binary

GENERATION_ROUTES = ("chat", "openai_chat", "run", "runsync")
FINAL = {"succeeded", "failed", "dead"}


def message_ids(client: redis.Redis, config: FleetConfig) -> set[str]:
    """Job ids that have a message somewhere: a queue (every priority list), unacked, parked."""
    ids: set[str] = set()
    for key in client.scan_iter(match="*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        base = name.split("\x06\x16")[0]
        if base in config.tiers and client.type(name) in ("list", b"list"):
            for raw in client.lrange(name, 0, -1):
                ids.add(json.loads(raw)["headers"]["id"])
    for raw in client.hvals("unacked"):
        ids.add(json.loads(raw)[0]["headers"]["id"])
    prefix = config.key_prefix
    for name in (f"{prefix}:parked", ):
        for i in client.zrange(name, 0, -1):
            ids.add(i.decode() if isinstance(i, bytes) else i)
    return ids


def statuses(client: redis.Redis, config: FleetConfig, ids: list[str]) -> dict[str, str]:
    """Each job's stored status, or ``absent`` when Redis has no record of it."""
    keys = [f"{config.key_prefix}:result:{i}" for i in ids]
    out: dict[str, str] = {}
    for i, raw in zip(ids, client.mget(keys) if keys else [], strict=True):
        out[i] = json.loads(raw)["status"] if raw else "absent"
    return out


@dataclass
class Account:
    """Jobs in, jobs out, and where the ones not out are."""

    label: str
    n_in: int
    out: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"[{self.label}] jobs in: {self.n_in}  out: {sum(self.out[s] for s in FINAL)}  "
                f"{dict(self.out)}  lost: {len(self.lost)}  stuck: {len(self.stuck)}")


def account(client: redis.Redis, config: FleetConfig, ids: list[str], label: str) -> Account:
    st = statuses(client, config, ids)
    have = message_ids(client, config)
    acc = Account(label, len(ids), Counter(st.values()))
    acc.lost = [i for i, s in st.items() if s not in FINAL]
    acc.stuck = [i for i in acc.lost if i not in have]
    return acc


def wait_final(client: redis.Redis, config: FleetConfig, ids: list[str],
               timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        st = statuses(client, config, ids)
        if all(s in FINAL for s in st.values()) or time.monotonic() > deadline:
            return st
        time.sleep(0.25)


def host_calls(sim: Any) -> int:
    """Generation requests every simulated host received: what a provider would bill."""
    return sum(sim.counters(name).get(route, 0) for name in sim.hosts
               for route in GENERATION_ROUTES)


class RedisProcess:
    """A redis-server on a free port with an AOF, that a test can SIGKILL and cut.

    ``appendfsync everysec`` is what production runs (``deploy/redis.conf``): a crash may
    lose the last second of writes. :meth:`crash` SIGKILLs the server and, with
    ``cut_s``, truncates the AOF back to its size ``cut_s`` seconds earlier, which is
    exactly what such a crash can leave on disk.
    """

    def __init__(self, folder: Path, *, appendfsync: str = "everysec") -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        self._sizes: list[tuple[float, int]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--aof-load-truncated", "yes",
                "--maxmemory-policy", "noeviction", "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return (self.folder / "redis.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def aof_file(self) -> Path:
        """The file new writes go to (Redis 7: appendonlydir/*.incr.aof; 6: appendonly.aof)."""
        incr = sorted((self.folder / "appendonlydir").glob("*.incr.aof")) \
            if (self.folder / "appendonlydir").exists() else []
        return incr[-1] if incr else self.folder / "appendonly.aof"

    def sample(self) -> None:
        """Remember the AOF's size now (call often; :meth:`crash` cuts back to a sample)."""
        with contextlib.suppress(FileNotFoundError):
            self._sizes.append((time.monotonic(), self.aof_file().stat().st_size))

    def crash(self, cut_s: float = 0.0) -> int:
        """SIGKILL; with ``cut_s`` drop the AOF's last ``cut_s`` seconds. Returns bytes cut."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        if cut_s <= 0:
            return 0
        path = self.aof_file()
        size = path.stat().st_size
        when = time.monotonic() - cut_s
        earlier = [s for t, s in self._sizes if t <= when]
        keep = earlier[-1] if earlier else 0
        with path.open("r+b") as f:
            f.truncate(keep)
        return size - keep

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def pick(rng: random.Random, items: list[Any]) -> Any:
    return items[rng.randrange(len(items))]


def kill_child(pids: list[int], rng: random.Random) -> int | None:
    if not pids:
        return None
    pid = pick(rng, pids)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return None
    return pid


def billing_mismatch(sim: Any, ledger: Any, client: redis.Redis, config: FleetConfig,
                     jobs: list[dict[str, Any]]) -> list[str]:
    """Per job and host: the generation calls the sims received against the ledger's
    host-call records, one line per job where they differ (what the ledger has, and any
    in-flight note left for the job), so a failed "billed" check says which call."""
    by_prompt = {json.dumps(j["prompt"])[1:-1]: j["id"] for j in jobs if j.get("prompt")}
    seen: dict[str, Counter[str]] = {}
    unmatched: Counter[str] = Counter()
    for name in sim.hosts:
        for call in sim.calls(name):
            if call["route"] not in GENERATION_ROUTES:
                continue
            found = [jid for p, jid in by_prompt.items() if p in call["body"]]
            if len(found) == 1:
                seen.setdefault(found[0], Counter())[name] += 1
            else:
                unmatched[name] += 1
    notes: dict[str, list[dict[str, Any]]] = {}
    for call_id, raw in client.hgetall(f"{config.key_prefix}:ledger:inflight").items():
        note = json.loads(raw)
        note["call"] = call_id.decode() if isinstance(call_id, bytes) else call_id
        notes.setdefault(note["job_id"], []).append(note)
    lines = [f"generation calls matching no single job: {dict(unmatched)}"] if unmatched else []
    for job in jobs:
        jid = job["id"]
        atts = ledger.job_attempts(jid)
        billed = Counter(a.host for a in atts if a.host)
        calls = seen.get(jid, Counter())
        if calls != billed or jid in notes:
            recs = [(a.attempt, a.tier, a.host, a.outcome, a.call, a.error) for a in atts]
            lines.append(f"{jid}: host calls {dict(calls)}  ledger {dict(billed)}  records {recs}"
                         f"  in-flight notes {notes.get(jid, [])}")
    return lines
