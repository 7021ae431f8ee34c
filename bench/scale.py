"""A burst against many workers: what one Redis carries, and what moving results off it buys.

    python bench/scale.py                 # 20,000 jobs, 20 worker processes (~5 min here)
    python bench/scale.py --jobs 100000   # the issue's size (~20+ min on this 2-core box)
    python bench/scale.py --jobs 2000 --out /tmp/s.json

A private redis-server, simulated hosts (latency x --scale), and 20 worker processes
across the tiers as separate Celery nodes (8 rules, 4 local-mac, 2 local-gpu, 2 runpod,
4 paid), all on this machine. The burst is submitted with ``submit_many`` in chunks of
1,000 as fast as the dispatcher goes; figures:

- jobs/s in (submit) and out (every job final), end to end;
- queue wait per tier, p50/p99: ledger time of the job's final record, less its service
  time, less the time its chunk was submitted;
- Redis CPU (server user+sys seconds per wall second: peak over 1 s windows, and mean)
  and memory (peak ``used_memory``), and bytes of Redis per finished job (what a
  finished job leaves: result, ledger records, Celery's task meta);
- then the same with Celery's result backend on a second redis-server (``result_url``):
  the task meta SETEX/PUBLISH per job move there. tierfleet's own result store and
  ledger stay on the broker's Redis: admission writes the pending result, the open-jobs
  record and the message in one script (see README, "What limits a fleet").
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import _jobs
from _fleet import BENCH_DIR, CLEANUP, Fleet, dump_json, install_signal_handlers, start_redis
from tierfleet.dispatch import Dispatcher
from tierfleet.lab.sim import write_config as write_sim_config
from tierfleet.ledger import Ledger

# 20 worker processes: (tier, nodes, processes per node)
LAYOUT = [("rules", 2, 4), ("local-mac", 1, 4), ("local-gpu", 1, 2), ("runpod", 1, 2),
          ("paid", 1, 4)]


def burst(n: int) -> list[dict[str, Any]]:
    """70% rules jobs, the rest model jobs over every tier (a busy day's mix)."""
    n_rules = int(n * 0.7)
    jobs = _jobs.rules_jobs(n_rules)
    pins = ["local-mac", "local-mac", "local-gpu", "runpod", "paid", "paid"]
    for i in range(n - n_rules):
        tier = pins[i % len(pins)]
        kind = "code" if tier in ("local-gpu", "runpod") else "chat"
        jobs.append({"kind": kind, "tier": tier, "workflow": "scale",
                     "prompt": f"Question {i}: what does error E{i % 97} mean, in one line?"})
    # Interleaved, as a burst from many producers would be.
    step = max(1, n // max(1, n - n_rules))
    out: list[dict[str, Any]] = []
    models = jobs[n_rules:]
    for i, j in enumerate(jobs[:n_rules]):
        out.append(j)
        if i % step == 0 and models:
            out.append(models.pop())
    return out + models


class RedisSampler:
    """INFO cpu/memory of one server every ``every`` seconds, on its own thread."""

    def __init__(self, client: Any, every: float = 1.0) -> None:
        self.r, self.every = client, every
        self.samples: list[tuple[float, float, int]] = []  # wall, cpu seconds, used_memory
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        info = self.r.info()
        self.samples.append((time.monotonic(), float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                             int(info["used_memory"])))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()
            self._stop.wait(self.every)

    def start(self) -> RedisSampler:
        self._t.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join(timeout=5)
        self._one()
        s = self.samples
        rates = [(c2 - c1) / (t2 - t1) for (t1, c1, _), (t2, c2, _)
                 in itertools.pairwise(s) if t2 > t1]
        wall = s[-1][0] - s[0][0]
        return {"cpu_peak": round(max(rates, default=0.0), 3),
                "cpu_mean": round((s[-1][1] - s[0][1]) / wall, 3) if wall > 0 else 0.0,
                "memory_peak_mb": round(max(m for _, _, m in s) / 2**20, 1)}


def run(workdir: Path, name: str, n: int, scale: float, split_results: bool) -> dict[str, Any]:
    fleet = Fleet(workdir, name, scale=scale, host_parallel=16).start()
    second = None
    try:
        if split_results:
            second = start_redis()
            fleet.config = fleet.config.model_copy(update={"result_url": second.url})
            fleet.config_path = write_sim_config(fleet.config, fleet.dir / "fleet.toml")
        for tier, nodes, procs in LAYOUT:
            for _ in range(nodes):
                fleet.worker(tier, concurrency=procs)
        d = Dispatcher(fleet.config)
        jobs = burst(n)
        d.submit_many(_jobs.rules_jobs(50, start=10**7))  # warm the door and the policy
        time.sleep(2)
        mem0 = int(fleet.r.info("memory")["used_memory"])
        sampler = RedisSampler(fleet.r).start()
        side = RedisSampler(_client(second.url)).start() if second else None
        submitted_at: dict[str, float] = {}
        t0 = time.time()
        for i in range(0, n, 1000):
            at = time.time()
            for h in d.submit_many(jobs[i:i + 1000]):
                submitted_at[h.id] = at
        t_in = time.time() - t0
        deadline = time.monotonic() + 3600
        while d.open.count() > 50:  # the warm-up's 50 may be done long ago: count ours
            fleet.check_workers()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{d.open.count()} jobs open after an hour")
            time.sleep(0.5)
        while d.open.count() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        t_out = time.time() - t0
        redis_figs = sampler.stop()
        side_figs = side.stop() if side else None
        time.sleep(1)
        mem1 = int(fleet.r.info("memory")["used_memory"])
        waits: dict[str, list[float]] = defaultdict(list)
        for rec in Ledger(fleet.r, fleet.config).raw_between(t0 - 1, time.time() + 1):
            at = submitted_at.get(rec["job_id"])
            if at is not None and rec.get("job_final"):
                waits[rec["tier"]].append(max(0.0, rec["ts"] - rec["latency_s"] - at))
        out: dict[str, Any] = {
            "jobs": n, "workers": sum(nodes * p for _, nodes, p in LAYOUT),
            "jobs_s_in": round(n / t_in, 1), "jobs_s_out": round(n / t_out, 1),
            "seconds_in": round(t_in, 1), "seconds_out": round(t_out, 1),
            "queue_wait_s": {t: {"p50": round(_pct(w, 50), 2), "p99": round(_pct(w, 99), 2),
                                 "jobs": len(w)} for t, w in sorted(waits.items())},
            "redis": redis_figs,
            "redis_bytes_per_job": round((mem1 - mem0) / n),
            "records": sum(len(w) for w in waits.values()),
        }
        if side_figs is not None:
            out["results_redis"] = side_figs
        return out
    finally:
        fleet.stop()
        if second is not None:
            second.cleanup()


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def _pct(xs: list[float], q: int) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return float(statistics.quantiles(xs, n=100, method="inclusive")[q - 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=0.02, help="simulated host latency factor")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "scale.json")
    ap.add_argument("--one", action="store_true", help="skip the second-Redis run")
    args = ap.parse_args(argv)
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="tierfleet-scale-"))
    out: dict[str, Any] = {"scale": args.scale, "layout": LAYOUT}
    try:
        out["one_redis"] = run(workdir, "scale-one", args.jobs, args.scale, False)
        print(json.dumps(out["one_redis"]), flush=True)
        if not args.one:
            out["results_on_second_redis"] = run(workdir, "scale-two", args.jobs, args.scale, True)
            print(json.dumps(out["results_on_second_redis"]), flush=True)
    finally:
        CLEANUP.run()
    dump_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
