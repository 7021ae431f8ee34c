"""Time to first token: straight to a simulated Ollama host vs through the fleet, same run.

    python bench/ttft.py                 # 40 requests each way, host at the profiled speed
    python bench/ttft.py -n 100 --scale 2 --out /tmp/ttft.json

One simulated Ollama host (the home lab's Mac mini, ``qwen3:4b``) answers both:

(a) straight: ``POST /api/chat`` with ``stream: true`` read by ``httpx``, the clock
    stopped at the first NDJSON line that carries text;
(b) through the fleet: the ``openai`` SDK with ``stream=True`` against the fleet's
    HTTP API (uvicorn on loopback), which submits a job to the ``local-mac`` queue; a
    Celery worker subprocess streams the host's tokens into the job's Redis Stream and
    the API relays them as SSE; the clock stops at the first chunk with content.

The two kinds of request alternate, each prompt is asked once each way (the simulated
answer, its time to first token included, depends only on the model and the prompt,
so both ways wait for the same host), and no prompt repeats (the answer cache never
answers). Printed as a table with the ratio fleet/straight and the fleet's added
milliseconds; written to ``bench/ttft_results.json``. ``bench/run.py --only ttft``
runs the same figure inside the main benchmark.
"""

from __future__ import annotations

import argparse
import math
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn
from rich.console import Console
from rich.table import Table

from _fleet import BENCH_DIR, CLEANUP, Fleet, dump_json, install_signal_handlers, machine_info
from tierfleet.api import create_app
from tierfleet.lab.processes import free_port

OUT = BENCH_DIR / "ttft_results.json"
HOST = "sim-mac"  # the home lab's Mac mini: Ollama's NDJSON, tier local-mac
MODEL = "qwen3:4b"
console = Console()


def pct(xs: list[float], q: float) -> float:
    """The q-quantile by the nearest rank (p95 of 40 is the 38th smallest)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(xs) * 1000, 1),
            "p95_ms": round(pct(xs, 0.95) * 1000, 1),
            "min_ms": round(min(xs) * 1000, 1), "max_ms": round(max(xs) * 1000, 1)}


def straight(client: httpx.Client, url: str, prompt: str) -> float:
    """Seconds to the first text of an Ollama NDJSON stream."""
    import json

    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", f"{url}/api/chat", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line:
                continue
            rec = json.loads(line)
            if first is None and (rec.get("message") or {}).get("content"):
                first = time.perf_counter() - t0
            if rec.get("done"):
                break
    if first is None:
        raise RuntimeError("the host streamed no text")
    return first


def through_fleet(client: openai.OpenAI, prompt: str) -> tuple[float, str]:
    """Seconds to the first content chunk of the SDK's stream, and the job id."""
    t0 = time.perf_counter()
    first = None
    job = ""
    stream = client.chat.completions.create(model="tier:local-mac", stream=True,
                                            messages=[{"role": "user", "content": prompt}])
    for chunk in stream:
        job = chunk.id.removeprefix("chatcmpl-")
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"job {job} streamed no text")
    return first, job


def bench_ttft(workdir: Path, scale: float, n: int) -> dict[str, Any]:
    """The figure: ``ttft_*`` keys for bench/run.py, details under ``ttft_detail``."""
    fleet = Fleet(workdir, "ttft", scale=scale).start()
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        fleet.worker("local-mac", concurrency=1)
        token = "bench-" + secrets.token_hex(12)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(fleet.config, tokens=[token]),
                                               host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        host_url = fleet.sim.host(HOST).url
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token,
                            max_retries=0, timeout=120)
        direct = httpx.Client(timeout=120)
        run_id = secrets.token_hex(3)
        a: list[float] = []
        b: list[float] = []
        # One warm-up each way (connections, the worker's first task), not counted.
        for i in range(-1, n):
            prompt = f"Bench {run_id} request {i}: greet the on-call engineer in two sentences."
            if i % 2:  # alternate which way goes first
                a.append(straight(direct, host_url, prompt))
                sec, _job = through_fleet(sdk, prompt)
            else:
                sec, _job = through_fleet(sdk, prompt)
                a.append(straight(direct, host_url, prompt))
            b.append(sec)
        a, b = a[1:], b[1:]
        direct.close()
        sa, sb = summary(a), summary(b)
        return {
            "ttft_direct_p50_ms": sa["median_ms"], "ttft_direct_p95_ms": sa["p95_ms"],
            "ttft_fleet_p50_ms": sb["median_ms"], "ttft_fleet_p95_ms": sb["p95_ms"],
            "ttft_ratio": round(sb["median_ms"] / sa["median_ms"], 3) if sa["median_ms"] else None,
            "ttft_added_p50_ms": round(sb["median_ms"] - sa["median_ms"], 1),
            "ttft_detail": {
                "n": n, "scale": scale, "host": HOST, "model": MODEL,
                "direct": {**sa, "what": "httpx stream of POST /api/chat (Ollama NDJSON)"},
                "fleet": {**sb, "what": "openai SDK stream=True -> API -> Celery worker -> "
                                        "Redis Stream -> SSE"},
                "ratio_means": "median through the fleet / median straight",
            },
        }
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        fleet.stop()


def print_table(out: dict[str, Any]) -> None:
    det = out["ttft_detail"]
    t = Table(title=f"time to first token, {det['n']} requests each way, {det['model']} on "
                    f"{det['host']} (simulated, latency x {det['scale']})")
    for c in ("path", "median ms", "p95 ms", "min ms", "max ms"):
        t.add_column(c, justify="left" if c == "path" else "right")
    for name in ("direct", "fleet"):
        s = det[name]
        t.add_row(f"{name}: {s['what']}", f"{s['median_ms']:.1f}", f"{s['p95_ms']:.1f}",
                  f"{s['min_ms']:.1f}", f"{s['max_ms']:.1f}")
    console.print(t)
    console.print(f"ratio fleet/direct (medians): [bold]{out['ttft_ratio']}[/]; the fleet adds "
                  f"{out['ttft_added_p50_ms']} ms at the median")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=40, help="requests each way")
    ap.add_argument("--scale", type=float, default=1.0, help="simulated latency factor")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    install_signal_handlers()
    import shutil
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="tierfleet-ttft-"))
    CLEANUP.add(lambda: shutil.rmtree(workdir, ignore_errors=True))
    try:
        out = bench_ttft(workdir, args.scale, args.n)
    finally:
        CLEANUP.run()
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out["machine"] = machine_info()
    out["simulated_hosts"] = True
    print_table(out)
    dump_json(args.out, out)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
