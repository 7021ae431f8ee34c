"""Per-job cost of the rules tier's run-time bound: fork isolation against inline.

    PYTHONPATH=src python bench/rules_bound.py [N]

Runs a small dedupe job N times under each isolation and prints the mean wall time
per job; the difference is what the fork (and the pipe round trip) costs.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import tierfleet.config
from tierfleet import rules, tokens
from tierfleet.config import load_config

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
base = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))
tokens.encoding()  # a worker preloads the tokenizer: fork a process of realistic size
payload = {"items": [f"ticket {i % 50}" for i in range(200)]}


def per_job(isolation: str) -> float:
    limits = base.limits.model_copy(
        update={"rules": base.limits.rules.model_copy(update={"isolation": isolation})}
    )
    cfg = base.model_copy(update={"limits": limits})
    rules.execute("dedupe", payload, cfg)  # warm-up
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(N):
            rules.execute("dedupe", payload, cfg)
        runs.append((time.perf_counter() - t0) / N)
    return statistics.median(runs)


inline = per_job("inline")
fork = per_job("fork")
rss = Path("/proc/self/status").read_text().split("VmRSS:")[1].split("\n")[0].strip()
print(f"RSS {rss}; inline {inline * 1e3:.2f} ms/job, fork {fork * 1e3:.2f} ms/job, "
      f"overhead {(fork - inline) * 1e3:.2f} ms/job")
