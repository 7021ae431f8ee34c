"""What reliability.durable_submit costs: submits/s with and without, as a ratio.

    PYTHONPATH=src python bench/durable_submit.py [--jobs 400] [--batch 1]

Starts its own redis-server (AOF on, appendfsync everysec, as deploy/redis.conf) plus
one replica, on free ports, and times ``Dispatcher.submit`` of rules jobs (no worker:
this measures the submit path only) under each setting the server supports. On Redis
< 7.2 "aof_local" needs appendfsync always, so it is timed on a second primary run that
way (the cost is then the fsync per write, paid by every writer, not only submits).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tierfleet.config import FleetConfig, load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.lab.embedded import free_port

BUILTIN = Path(__file__).resolve().parents[1] / "src" / "tierfleet" / "defaults.toml"


def start(binary: str, folder: Path, fsync: str,
          replica_of: int | None = None) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
            "--appendonly", "yes", "--appendfsync", fsync, "--daemonize", "no"]
    if replica_of:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            if client.ping():
                break
        except redis.RedisError:
            time.sleep(0.05)
    return port, proc


def rate(config: FleetConfig, n: int, batch: int) -> float:
    d = Dispatcher(config)
    jobs = [{"kind": "keyword_route", "input": {"text": f"vpn {i}"}} for i in range(n)]
    d.submit(jobs[0])  # connect, probe the server
    t0 = time.perf_counter()
    if batch == 1:
        for j in jobs:
            d.submit(j)
    else:
        for i in range(0, n, batch):
            d.submit_many(jobs[i:i + batch])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--batch", type=int, default=1, help="1: submit(); more: submit_many()")
    args = ap.parse_args()
    binary = shutil.which("redis-server") or "redis-server"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[2]
    root = Path(tempfile.mkdtemp(prefix="tierfleet-bench-durable-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        primary, p = start(binary, root / "primary", "everysec")
        procs.append(p)
        _, p = start(binary, root / "replica", "everysec", replica_of=primary)
        procs.append(p)
        always, p = start(binary, root / "always", "always")
        procs.append(p)
        for _ in range(200):  # until the replica has synced
            info = redis.Redis(port=primary).info("replication")
            if info.get("slave0", {}).get("state") == "online":
                break
            time.sleep(0.05)
        base = load_config(BUILTIN)

        def cfg(port: int, mode: str) -> FleetConfig:
            data = base.model_dump()
            data["redis_url"] = f"redis://127.0.0.1:{port}/0"
            data["reliability"] = {**data["reliability"], "durable_submit": mode}
            return FleetConfig(**data)

        print(f"redis-server {version}; {args.jobs} jobs, batch {args.batch}")
        r_none = rate(cfg(primary, "none"), args.jobs, args.batch)
        print(f"  none                          {r_none:8.0f} submits/s")
        r_rep = rate(cfg(primary, "replicas"), args.jobs, args.batch)
        print(f"  replicas (1)                  {r_rep:8.0f} submits/s   ratio {r_rep / r_none:.2f}")
        try:
            r_aof = rate(cfg(primary, "aof_local"), args.jobs, args.batch)
            print(f"  aof_local (WAITAOF)           {r_aof:8.0f} submits/s   ratio {r_aof / r_none:.2f}")
        except Exception as exc:
            print(f"  aof_local on everysec:        refused: {str(exc)[:110]}...")
            r_none_a = rate(cfg(always, "none"), args.jobs, args.batch)
            r_aof = rate(cfg(always, "aof_local"), args.jobs, args.batch)
            print(f"  aof_local (appendfsync always){r_aof:8.0f} submits/s   ratio {r_aof / r_none:.2f}"
                  f" (none on the same server: {r_none_a:.0f}/s)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
