"""Real processes for the benchmarks: a private redis-server, simulated hosts, Celery workers.

Everything started here is registered with :data:`CLEANUP`, which stops it in
reverse order on normal exit, on an error, on Ctrl-C and on SIGTERM, so a
benchmark never leaves a worker or a redis-server behind. Worker nodes run in
their own session: one ``killpg`` takes the main process and its pool children.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tierfleet.config import FleetConfig
from tierfleet.lab.embedded import EmbeddedRedis, redis_server_binary
from tierfleet.lab.fleets import home_lab
from tierfleet.lab.processes import CeleryWorker
from tierfleet.lab.sim import SimFleet
from tierfleet.lab.sim import write_config as write_sim_config

BENCH_DIR = Path(__file__).resolve().parent
KEY_PREFIX = "tfbench"
RUNPOD_KEY_ENV = "TIERFLEET_BENCH_RUNPOD_KEY"
OPENAI_KEY_ENV = "TIERFLEET_BENCH_OPENAI_KEY"


class Cleanup:
    """Stop callbacks run once, newest first, whatever way the run ends."""

    def __init__(self) -> None:
        self._items: list[tuple[int, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._next = 0

    def add(self, fn: Callable[[], None]) -> int:
        with self._lock:
            self._next += 1
            self._items.append((self._next, fn))
            return self._next

    def discard(self, token: int) -> None:
        with self._lock:
            self._items = [(t, f) for t, f in self._items if t != token]

    def run(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    return
                _, fn = self._items.pop()
            try:
                fn()
            except Exception as exc:  # one failed stop must not leave the rest running
                print(f"cleanup: {exc}", file=sys.stderr)


CLEANUP = Cleanup()
atexit.register(CLEANUP.run)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: through the cleanup."""

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def sim_keys() -> None:
    """Keys the simulated Runpod and OpenAI hosts demand; random per run, never stored."""
    for env in (RUNPOD_KEY_ENV, OPENAI_KEY_ENV):
        os.environ.setdefault(env, "bench-" + secrets.token_hex(12))


def start_redis() -> EmbeddedRedis:
    server = EmbeddedRedis().start()
    CLEANUP.add(server.cleanup)
    return server


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


# -- the fleet's config -----------------------------------------------------------------------


def fleet_data(redis_url: str, ledger_dir: Path, *,
               reliability: dict[str, Any] | None = None) -> dict[str, Any]:
    """The home-lab example fleet (:func:`tierfleet.lab.fleets.home_lab`), simulated.

    Reliability knobs are the project's defaults unless ``reliability`` says otherwise;
    host timeouts leave room for a 30B answer at full scale (8-12 s).
    """
    return home_lab(
        names={"mac": "sim-mac", "gpu": "sim-gpu", "runpod": "sim-runpod", "paid": "sim-openai"},
        key_envs={"runpod": RUNPOD_KEY_ENV, "paid": OPENAI_KEY_ENV},
        host_defaults={"connect_timeout_s": 2},
        overrides={"redis_url": redis_url, "key_prefix": KEY_PREFIX,
                   "reliability": dict(reliability or {}), "ledger": {"dir": str(ledger_dir)}},
    )


# -- worker nodes -----------------------------------------------------------------------------


class Worker:
    """A Celery worker node as a subprocess, started the way operators start one."""

    def __init__(self, app: str, queue: str, config_path: Path, log_dir: Path, *,
                 name: str, concurrency: int = 1, pool: str = "prefork",
                 extra_env: dict[str, str] | None = None) -> None:
        self.app = app
        self.queue = queue
        self.config_path = config_path
        self.name = name
        self.concurrency = concurrency
        self.pool = pool
        self.extra_env = extra_env or {}
        self.log_path = log_dir / f"worker-{name.split('@')[0]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._token: int | None = None

    def start(self) -> Worker:
        worker = CeleryWorker(self.queue, self.config_path, name=self.name,
                              concurrency=self.concurrency, pool=self.pool, app=self.app,
                              extra_env=self.extra_env)
        with self.log_path.open("ab") as log:
            self.proc = worker.popen(log, cwd=self.config_path.parent, new_session=True)
        self._token = CLEANUP.add(self.stop)
        return self

    def wait_ready(self, client: redis.Redis, ready_key: str, timeout: float = 60.0) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if client.exists(ready_key):
                return self
            self.check_alive()
            time.sleep(0.05)
        raise RuntimeError(f"worker {self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown of the node and its pool
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # Whatever is left of the group (a pool child that outlived its parent) goes too; a
        # group id is not handed out again while the group has members.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=5)
        self.proc = None
        if self._token is not None:
            CLEANUP.discard(self._token)
            self._token = None


class Fleet:
    """A private redis-server, simulated hosts on free ports, a config on disk, and workers.

    ``Fleet(workdir, "home-lab-routed", scale=1.0).start()``, then ``.worker("local-gpu")``.
    """

    def __init__(self, workdir: Path, name: str, *, scale: float,
                 reliability: dict[str, Any] | None = None, host_scale: dict[str, float] | None = None,
                 host_parallel: int = 4) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.scale = scale
        self.reliability = reliability
        self.host_scale = host_scale or {}
        self.host_parallel = host_parallel
        self.workers: list[Worker] = []

    def start(self) -> Fleet:
        sim_keys()
        self.redis = start_redis()
        self.r = client_for(self.redis.url)
        base = FleetConfig(**fleet_data(self.redis.url, self.dir / "ledger",
                                        reliability=self.reliability))
        self.sim = SimFleet.from_config(base, scale=self.scale, free_ports=True, admin_port=None,
                                        parallel=self.host_parallel)
        self.sim.start()
        CLEANUP.add(self.sim.stop)
        for host, s in self.host_scale.items():
            self.sim.host(host).scale = s
        self.config = self.sim.config
        self.config_path = write_sim_config(self.config, self.dir / "fleet.toml")
        return self

    def worker(self, tier: str, *, concurrency: int = 1, pool: str = "prefork",
               wait: bool = True) -> Worker:
        name = f"{self.name}-{tier}-{len(self.workers)}@bench"
        w = Worker("tierfleet.worker", tier, self.config_path, self.dir, name=name,
                   concurrency=concurrency, pool=pool).start()
        self.workers.append(w)
        if wait:
            w.wait_ready(self.r, f"{KEY_PREFIX}:hb:{name}")
        return w

    def check_workers(self) -> None:
        for w in self.workers:
            w.check_alive()

    def stop(self) -> None:
        for w in reversed(self.workers):
            w.stop()
        self.workers.clear()


def machine_info() -> dict[str, Any]:
    import platform

    import celery
    import kombu

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    info["mem_total_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        out = subprocess.run([redis_server_binary(), "--version"], capture_output=True,
                             text=True, timeout=5)
        info["redis_server"] = out.stdout.strip().split(" ")[2].removeprefix("v=")
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return info


def dump_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
