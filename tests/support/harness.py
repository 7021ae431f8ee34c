"""Real processes for integration tests: a private redis-server, Celery worker
subprocesses started the way operators start them, and fleet configs on disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tests.support.fleets import rules_only
from tierfleet.config import load_config
from tierfleet.heartbeats import heartbeat_key
from tierfleet.lab.processes import CeleryWorker

ROOT = Path(__file__).resolve().parents[2]

FAST_RELIABILITY = """
[reliability]
visibility_timeout_s = 3600
task_time_limit_s = 600
max_attempts = {max_attempts}
park_backoff_s = [0.5, 1.0, 1.0, 2.0]
health_timeout_s = 1.0
health_cache_s = 0.3
breaker_failures = 1
breaker_open_s = {breaker_open_s}
retry_after_budget_s = 2.0
heartbeat_s = 0.5
dead_after_s = 3.0
repair_after_s = 3.0
repair_every_s = 1.0
"""


def write_config(path: Path, redis_url: str, body: str = "", *, max_attempts: int = 8,
                 breaker_open_s: float = 2.0, ledger_dir: Path | None = None) -> Path:
    """A fleet config: the given tiers/hosts/models body plus fast reliability knobs."""
    ledger = ledger_dir or path.parent / "ledger"
    text = (
        f'redis_url = "{redis_url}"\n'
        f'key_prefix = "tf"\n'
        + (body or RULES_ONLY)
        + FAST_RELIABILITY.format(max_attempts=max_attempts, breaker_open_s=breaker_open_s)
        + f'\n[ledger]\ndir = "{ledger}"\n'
    )
    path.write_text(text)
    return path


# The default body: rules and two model tiers whose hosts nobody listens on.
RULES_ONLY = rules_only()


class Worker:
    """``celery -A tierfleet.worker worker -Q TIER`` as a subprocess."""

    def __init__(self, tier: str, config: Path, *, name: str | None = None, concurrency: int = 1,
                 pool: str = "prefork", env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> None:
        self.tier = tier
        self.config = config
        self.name = name or f"{tier.replace(',', '+')}-{os.getpid()}-{time.monotonic_ns()}@test"
        self.concurrency = concurrency
        self.pool = pool
        self.env = env or {}
        self.log_path = (log_dir or config.parent) / f"worker-{self.name.split('@')[0]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = False  # set when the test stops or kills it on purpose
        self.restarts = 0

    def start(self, client: redis.Redis, timeout: float = 30.0) -> Worker:
        worker = CeleryWorker(self.tier, self.config, name=self.name, concurrency=self.concurrency,
                              pool=self.pool, loglevel="INFO", extra_env=self.env)
        self._log = self.log_path.open("ab")
        self.proc = worker.popen(self._log, cwd=self.config.parent, new_session=True)
        deadline = time.monotonic() + timeout
        hb = heartbeat_key(load_config(self.config), self.name)
        while time.monotonic() < deadline:
            if client.exists(hb):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} did not start: {self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def children(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole node (main process and pool children): a machine powering off."""
        self.expected_exit = True
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        self.expected_exit = True
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()


def read_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cli(args: list[str], config: Path, *, input_text: str | None = None,
        timeout: float = 120.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "TIERFLEET_CONFIG": str(config), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tierfleet", *args], input=input_text,
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=str(config.parent))


FAST_RELIABILITY_DATA: dict[str, Any] = {
    "visibility_timeout_s": 3600,
    "task_time_limit_s": 600,
    "max_attempts": 8,
    "park_backoff_s": [0.5, 1.0, 1.0, 2.0],
    "health_timeout_s": 1.0,
    "health_cache_s": 0.3,
    "breaker_failures": 1,
    "breaker_open_s": 2.0,
    "retry_after_budget_s": 2.0,
    "heartbeat_s": 0.5,
    "dead_after_s": 3.0,
    "repair_after_s": 3.0,
    "repair_every_s": 1.0,
    "stall_restart_s": 10.0,
}


class ModelFleet:
    """Simulated hosts in this process, a config on disk naming their real ports, and real
    worker subprocesses per tier. ``with ModelFleet(tmp, url, client) as f: f.start("rules")``."""

    def __init__(self, tmp: Path, redis_url: str, client: redis.Redis, *,
                 reliability: dict[str, Any] | None = None, scale: float = 0.01,
                 hosts: dict[str, dict[str, Any]] | None = None) -> None:
        from tests.support.sim_fixtures import sim_config_data
        from tierfleet.config import FleetConfig

        data = sim_config_data()
        for name, changes in (hosts or {}).items():
            data["hosts"][name].update(changes)
        data.update(redis_url=redis_url, key_prefix="tf",
                    reliability={**FAST_RELIABILITY_DATA, **(reliability or {})},
                    ledger={"dir": str(tmp / "ledger")})
        self.base = FleetConfig(**data)
        self.tmp = tmp
        self.client = client
        self.scale = scale
        self.workers: list[Worker] = []

    def __enter__(self) -> ModelFleet:
        from tests.support.sim_fixtures import sim_hosts
        from tierfleet.lab.sim import write_config as write_sim_config

        self._ctx = sim_hosts(self.base, scale=self.scale)
        self.sim = self._ctx.__enter__()
        self.config = self.sim.config
        self.config_path = write_sim_config(self.config, self.tmp / "fleet.toml")
        self._supervising = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        """What systemd's Restart=always does: a worker that exits on its own comes back."""
        while not self._supervising.wait(0.5):
            for w in list(self.workers):
                if w.proc is not None and w.proc.poll() is not None and not w.expected_exit:
                    w.restarts += 1
                    w.start(self.client)

    def start(self, tier: str, **kw: Any) -> Worker:
        w = Worker(tier, self.config_path, **kw).start(self.client)
        self.workers.append(w)
        return w

    def dispatcher(self) -> Any:
        from tierfleet.dispatch import Dispatcher

        return Dispatcher(self.config)

    def __exit__(self, *exc: object) -> None:
        self._supervising.set()
        self._supervisor.join(timeout=5)
        for w in self.workers:
            w.stop()
        self._ctx.__exit__(None, None, None)

    def dump_logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{_interesting(w.log())[-6000:]}" for w in self.workers)


def _interesting(log: str) -> str:
    """Worker log lines worth reading after a failure (not every task's success line)."""
    return "\n".join(ln for ln in log.splitlines() if "succeeded in" not in ln)


@contextlib.contextmanager
def flower_for(config_path: Path, folder: Path) -> Iterator[str]:
    """``tierfleet flower`` on a free port for a test fleet; yields its base URL once it
    lists the workers and hears their events; stops it (its log: ``folder/flower.log``)."""
    import httpx

    from tierfleet.lab.embedded import free_port

    port = free_port()
    with (folder / "flower.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierfleet", "flower", "--port", str(port)],
            env={**os.environ, "TIERFLEET_CONFIG": str(config_path)},
            cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up(probe: Any) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (folder / "flower.log").read_text(errors="replace")
            try:
                if probe():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("Flower did not come up with the workers' events")

    try:
        up(lambda: httpx.get(f"{base}/api/workers", timeout=5).status_code == 200)
        up(lambda: all(httpx.get(f"{base}/api/workers", params={"status": 1}, timeout=5).json().values()))
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
