"""`make bench` end to end at its smallest: dispatch and routing figures come out as numbers.

No timing thresholds: speed belongs in the benchmark's own report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_dispatch_and_route_write_their_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TIERFLEET_CONFIG", "TIERFLEET_REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--only", "dispatch,route",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["errors"] == {}
    for key in ("dispatch_ratio", "dispatch_batch_ratio", "route_p50_us", "route_p99_us",
                "dispatch_bare_jobs_s", "dispatch_submit_jobs_s", "dispatch_submit_many_jobs_s"):
        assert isinstance(data[key], int | float) and data[key] > 0, (key, data.get(key))
    assert data["route_p99_us"] >= data["route_p50_us"]
    assert data["dispatch_detail"]["messages_per_run"] > 0
    assert data["machine"]["cpus"] >= 1
    assert "dispatch_ratio" in proc.stdout  # the table was printed


def test_bench_ttft_measures_both_ways_in_one_run(tmp_path: Path) -> None:
    out = tmp_path / "ttft.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TIERFLEET_CONFIG", "TIERFLEET_REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ttft.py"), "-n", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    for key in ("ttft_direct_p50_ms", "ttft_direct_p95_ms", "ttft_fleet_p50_ms",
                "ttft_fleet_p95_ms", "ttft_ratio"):
        assert isinstance(data[key], int | float) and data[key] > 0, (key, data.get(key))
    assert data["ttft_direct_p95_ms"] >= data["ttft_direct_p50_ms"]
    assert data["ttft_detail"]["n"] == 3 and data["ttft_detail"]["host"] == "sim-mac"
    assert "ratio fleet/direct" in proc.stdout  # the table was printed
