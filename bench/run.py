"""tierfleet's benchmark: what the fleet costs and saves, against baselines run in the same pass.

    python bench/run.py            # about 9 minutes: the home-lab day at full latency (scale 1.0)
    python bench/run.py --quick    # about 2 minutes: simulated latencies x 0.1, fewer messages
    python bench/run.py --only dispatch,route --tiny --out /tmp/r.json

Everything runs against private redis-servers on free ports (never the
machine's 6379), simulated model hosts on loopback and real Celery worker
subprocesses started as operators start them. Figures:

1. dispatch: jobs/s through ``Dispatcher.submit`` (one at a time) and
   ``submit_many``, each divided by bare Celery ``apply_async`` of a no-op task
   with the same settings on the same Redis; rounds interleaved, medians kept.
2. throughput: rules jobs/s end to end on one worker node with two prefork
   processes, divided by a bare Celery no-op worker on the same setup. The queue
   is filled first; the rate is taken after a warm-up share has drained, so
   worker start-up is not in it.
3. route latency: ``Policy.route`` of untyped (``auto``) 1,000-token prompts on
   an idle FleetState, token counting and classification included.
4. failover: a code job is running on the GPU box's host when the host is
   killed; seconds from the kill to the first job completed by its fallback
   tier (the ledger's time of that attempt), median of several trials.
5. the home-lab day (30 quick, 5 code, 2 vision, 1 reasoning) routed through the
   fleet vs every job pinned to the 30B model on the GPU box; one worker process
   per tier, because the home lab's GPU box runs one model at a time.
6. cost: a mixed day routed vs the same day sent to the paid model, spend from
   the ledger; the ledger report's own savings estimate alongside.
7. ttft: time to first token of a streamed chat, straight to the simulated Ollama
   host vs through the fleet (openai SDK -> API -> worker -> Redis Stream -> SSE),
   median and p95 of the same prompts each way (``bench/ttft.py`` alone does the same).

The home-lab day, the failover trials and the cost day are mostly waiting on
simulated hosts, so they run side by side, each on its own Redis and workers,
after the CPU-bound figures are done.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import _jobs
import bare_celery
import ttft
from _fleet import (
    BENCH_DIR,
    CLEANUP,
    Fleet,
    Worker,
    client_for,
    dump_json,
    fleet_data,
    install_signal_handlers,
    machine_info,
    start_redis,
)
from tierfleet.config import FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.jobs import TERMINAL, Job, Result
from tierfleet.lab.sim import write_config as write_sim_config
from tierfleet.ledger import Ledger
from tierfleet.policy import FleetState, build_policy
from tierfleet.reports.spend import report

OUT = BENCH_DIR / "results.json"
console = Console()
STOP = threading.Event()
PARTS = ("dispatch", "route", "throughput", "failover", "home_lab_day", "cost", "ttft")


@dataclass(frozen=True)
class Sizes:
    dispatch_n: int
    dispatch_rounds: int
    batch: int
    throughput_n: int
    throughput_warm: int
    throughput_rounds: int
    route_n: int
    failover_trials: int
    ttft_n: int = 40


FULL = Sizes(3000, 3, 500, 3000, 300, 2, 2000, 5, 60)
QUICK = Sizes(1500, 2, 500, 1500, 200, 1, 1000, 3, 30)
TINY = Sizes(150, 1, 50, 300, 60, 1, 60, 1, 5)


def log(msg: str) -> None:
    console.log(msg)


# -- helpers ----------------------------------------------------------------------------------


def wait_results(d: Dispatcher, ids: list[str], timeout: float,
                 check: Callable[[], None] | None = None) -> tuple[list[Result], float]:
    """Poll until every job is final; returns the results and the wall time it was seen done."""
    deadline = time.monotonic() + timeout
    done: dict[str, Result] = {}
    pending = list(ids)
    while pending:
        for jid, res in zip(pending, d.results.get_many(pending), strict=True):
            if res is not None and res.status in TERMINAL:
                done[jid] = res
        pending = [j for j in pending if j not in done]
        if not pending:
            break
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs unfinished after {timeout:.0f}s")
        nap(0.05)
    return [done[j] for j in ids], time.time()


def nap(seconds: float) -> None:
    """Sleep, unless the run is being stopped: then end this thread's part at once."""
    if STOP.wait(seconds):
        raise KeyboardInterrupt


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def rounded(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


# -- 1. dispatch -----------------------------------------------------------------------------


def bench_dispatch(workdir: Path, sz: Sizes) -> dict[str, Any]:
    server = start_redis()
    try:
        return _dispatch(server.url, workdir, sz)
    finally:
        server.cleanup()


def _dispatch(url: str, workdir: Path, sz: Sizes) -> dict[str, Any]:
    r = client_for(url)
    config = FleetConfig(**fleet_data(url, workdir / "dispatch-ledger"))
    d = Dispatcher(config)
    app = bare_celery.make_app(config)
    noop = app.tasks[bare_celery.NOOP]
    n = sz.dispatch_n

    def bare(jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            noop.apply_async(kwargs={"job": job}, queue=bare_celery.QUEUE)

    def one_by_one(jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            d.submit(job)

    def batched(jobs: list[dict[str, Any]]) -> None:
        for i in range(0, len(jobs), sz.batch):
            d.submit_many(jobs[i:i + sz.batch])

    def bare_batched(jobs: list[dict[str, Any]]) -> None:
        # Context, not a ratio's base: the same no-op publishes through kombu's batch.
        for i in range(0, len(jobs), sz.batch):
            with app.producer_or_acquire() as producer, producer.batch():
                for job in jobs[i:i + sz.batch]:
                    noop.apply_async(kwargs={"job": job}, queue=bare_celery.QUEUE, producer=producer)

    methods: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
        "bare": (bare, bare_celery.QUEUE), "submit": (one_by_one, "rules"),
        "submit_many": (batched, "rules"), "bare_batch": (bare_batched, bare_celery.QUEUE),
    }
    # Warm every path once (connections, the policy's models, the tokenizer), then flush.
    for fn, _ in methods.values():
        fn(_jobs.rules_jobs(min(200, n)))
    r.flushdb()
    rates: dict[str, list[float]] = {m: [] for m in methods}
    order = list(methods)
    for rnd in range(sz.dispatch_rounds):
        # Rotate, so no method always runs first (or always right after another).
        for name in order[rnd % len(order):] + order[:rnd % len(order)]:
            fn, queue = methods[name]
            jobs = _jobs.rules_jobs(n, start=rnd * n)
            t0 = time.perf_counter()
            fn(jobs)
            dt = time.perf_counter() - t0
            queued = r.llen(queue)
            if queued != n:
                raise RuntimeError(f"dispatch {name}: {queued} messages queued, expected {n}")
            rates[name].append(rate(n, dt))
            r.flushdb()
    med = {m: statistics.median(v) for m, v in rates.items()}
    return {
        "dispatch_ratio": rounded(med["submit"] / med["bare"]),
        "dispatch_batch_ratio": rounded(med["submit_many"] / med["bare"]),
        "dispatch_bare_jobs_s": rounded(med["bare"], 1),
        "dispatch_submit_jobs_s": rounded(med["submit"], 1),
        "dispatch_submit_many_jobs_s": rounded(med["submit_many"], 1),
        "dispatch_bare_batch_jobs_s": rounded(med["bare_batch"], 1),
        "dispatch_detail": {
            "messages_per_run": n, "rounds": sz.dispatch_rounds, "submit_many_batch": sz.batch,
            "job": "keyword_route (rules tier)", "jobs_s_each_round": {
                m: [rounded(x, 1) for x in v] for m, v in rates.items()},
            "bare": "apply_async of a no-op task, tierfleet's Celery settings, same Redis",
            "bare_batch": "the same no-op apply_async inside kombu's producer.batch() (context)",
        },
    }


# -- 2. throughput -----------------------------------------------------------------------------


def drain_rate(r: Any, queue: str, total: int, warm: int, worker: Worker,
               timeout: float) -> tuple[float, float, int]:
    """Jobs/s once ``warm`` jobs are done: messages leave the queue and the unacked hash
    (acks_late: a message is acknowledged only after its task returned)."""

    def remaining() -> int:
        pipe = r.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.hlen("unacked")
        a, b = pipe.execute()
        return int(a) + int(b)

    deadline = time.monotonic() + timeout
    t0 = done0 = None
    last_check = 0.0
    while True:
        left = remaining()
        now = time.perf_counter()
        if t0 is None and total - left >= warm:
            t0, done0 = now, total - left
        if left == 0:
            assert t0 is not None and done0 is not None
            return rate(total - done0, now - t0), now - t0, total - done0
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of {total} messages left on {queue} after {timeout:.0f}s")
        if now - last_check > 0.5:
            worker.check_alive()
            last_check = now
            if STOP.is_set():
                raise KeyboardInterrupt
        time.sleep(0.005)


def bench_throughput(workdir: Path, sz: Sizes) -> dict[str, Any]:
    server = start_redis()
    try:
        return _throughput(server.url, workdir, sz)
    finally:
        server.cleanup()


def _throughput(url: str, workdir: Path, sz: Sizes) -> dict[str, Any]:
    r = client_for(url)
    folder = workdir / "throughput"
    folder.mkdir(exist_ok=True)
    config = FleetConfig(**fleet_data(url, folder / "ledger"))
    config_path = write_sim_config(config, folder / "fleet.toml")
    d = Dispatcher(config)
    app = bare_celery.make_app(config)
    noop = app.tasks[bare_celery.NOOP]
    total = sz.throughput_n + sz.throughput_warm
    pythonpath = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)

    def run_bare(rnd: int) -> float:
        r.flushdb()
        with app.producer_or_acquire() as producer, producer.batch():
            for job in _jobs.rules_jobs(total, start=rnd * total):
                noop.apply_async(kwargs={"job": job}, queue=bare_celery.QUEUE, producer=producer)
        w = Worker("bare_celery", bare_celery.QUEUE, config_path, folder,
                   name=f"bare-{rnd}@bench", concurrency=2,
                   extra_env={"PYTHONPATH": pythonpath}).start()
        try:
            jobs_s, _, _ = drain_rate(r, bare_celery.QUEUE, total, sz.throughput_warm, w, 600)
        finally:
            w.stop()
        return jobs_s

    def run_tierfleet(rnd: int) -> float:
        r.flushdb()
        ids: list[str] = []
        jobs = _jobs.rules_jobs(total, start=rnd * total)
        for i in range(0, total, 1000):
            ids += [h.id for h in d.submit_many(jobs[i:i + 1000])]
        w = Worker("tierfleet.worker", "rules", config_path, folder,
                   name=f"rules-{rnd}@bench", concurrency=2).start()
        try:
            jobs_s, _, _ = drain_rate(r, "rules", total, sz.throughput_warm, w, 600)
            results, _ = wait_results(d, ids, 60)
        finally:
            w.stop()
        bad = [x for x in results if not x.ok]
        if bad:
            raise RuntimeError(f"throughput: {len(bad)} rules jobs did not succeed: {bad[0].error}")
        return jobs_s

    rates: dict[str, list[float]] = {"bare": [], "tierfleet": []}
    for rnd in range(sz.throughput_rounds):
        pair = [("bare", run_bare), ("tierfleet", run_tierfleet)]
        for name, fn in pair if rnd % 2 == 0 else pair[::-1]:
            rates[name].append(fn(rnd))
    med = {m: statistics.median(v) for m, v in rates.items()}
    return {
        "throughput_ratio": rounded(med["tierfleet"] / med["bare"]),
        "throughput_bare_jobs_s": rounded(med["bare"], 1),
        "throughput_tierfleet_jobs_s": rounded(med["tierfleet"], 1),
        "throughput_detail": {
            "workers": "one worker node, prefork pool, concurrency 2 (2 worker processes)",
            "job": "keyword_route (rules tier)", "measured_jobs": sz.throughput_n,
            "warm_up_jobs": sz.throughput_warm, "rounds": sz.throughput_rounds,
            "jobs_s_each_round": {m: [rounded(x, 1) for x in v] for m, v in rates.items()},
            "bare": "celery -A bare_celery: a no-op task, tierfleet's Celery settings",
        },
    }


# -- 3. route latency ------------------------------------------------------------------------


def bench_route(workdir: Path, sz: Sizes) -> dict[str, Any]:
    config = FleetConfig(**fleet_data("redis://127.0.0.1:1/0", workdir / "route-ledger"))
    policy = build_policy(config)
    state = FleetState()
    prompts, source = _jobs.route_prompts(sz.route_n + 50)
    for p in prompts[-50:]:  # load the models and the tokenizer before timing
        policy.route(Job(prompt=p), state)
    jobs = [Job(prompt=p) for p in prompts[:sz.route_n]]
    typed = [Job(kind="summary", prompt=p) for p in prompts[:sz.route_n]]

    def timings(batch: list[Job]) -> list[float]:
        out = []
        for job in batch:
            t0 = time.perf_counter_ns()
            policy.route(job, state)
            out.append((time.perf_counter_ns() - t0) / 1000)
        return out

    auto_us = timings(jobs)
    typed_us = timings(typed)

    def pct(xs: list[float], q: float) -> float:
        return float(statistics.quantiles(xs, n=100, method="inclusive")[q - 1]) if len(xs) > 1 else xs[0]

    return {
        "route_p50_us": round(pct(auto_us, 50), 1),
        "route_p99_us": round(pct(auto_us, 99), 1),
        "route_detail": {
            "prompts": sz.route_n, "tokens_per_prompt": 1000, "source": source,
            "job": "kind auto (token count + learned classifier + every stage)",
            "state": "FleetState()", "mean_us": round(statistics.fmean(auto_us), 1),
            "max_us": round(max(auto_us), 1),
            "typed_summary_p50_us": round(pct(typed_us, 50), 1),
            "typed_summary_p99_us": round(pct(typed_us, 99), 1),
            "classifier": config.policy.classifier,
        },
    }


# -- 4. failover -----------------------------------------------------------------------------


def _first_fallback(fleet: Fleet, ids: set[str], since: float) -> tuple[str, float] | None:
    """The earliest job completed on another tier after a failed attempt on local-gpu."""
    ledger = Ledger(fleet.r, fleet.config)
    best: tuple[str, float] | None = None
    for rec in ledger.raw_between(since, time.time() + 1):
        if rec.get("outcome") != "ok" or not rec.get("fallbacks") or rec.get("tier") == "local-gpu":
            continue
        if rec["job_id"] not in ids:
            continue
        tried = ledger.job_attempts(rec["job_id"])
        fell = any(a.tier == "local-gpu" and a.outcome == "fallback" for a in tried)
        if fell and (best is None or rec["ts"] < best[1]):
            best = (rec["job_id"], float(rec["ts"]))
    return best


def _served_by(fleet: Fleet, host: str, since: float) -> bool:
    return any(rec.get("host") == host and rec.get("outcome") == "ok"
               for rec in Ledger(fleet.r, fleet.config).raw_between(since, time.time() + 1))


def bench_failover(workdir: Path, scale: float, trials: int) -> dict[str, Any]:
    # Project defaults, but a 3 s open period so the next trial need not wait 30 s for the
    # breaker; the open period plays no part between the kill and the fallback.
    fleet = Fleet(workdir, "failover", scale=scale, reliability={"breaker_open_s": 3.0}).start()
    try:
        for tier in ("local-gpu", "local-mac", "runpod", "paid"):
            fleet.worker(tier)
        d = Dispatcher(fleet.config)
        code_ids: list[str] = []
        code_every_s = 9.0 * scale  # about one 30B answer (8-12 s at scale 1)
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []

        def produce() -> None:
            # Jobs arrive at a steady pace whatever happens to the fleet: a code job about as
            # often as the GPU box finishes one (so it always has one running), a quick one a
            # second. Where they go after the kill is the dispatcher's business.
            k, next_code, next_quick = 0, 0.0, 0.0
            try:
                while not stop.is_set() and not STOP.is_set():
                    now = time.monotonic()
                    if now >= next_code:
                        h = d.submit({"kind": "code", "workflow": "failover", "cache": False,
                                      "prompt": f"Write a Python function number {k} that merges "
                                                "two sorted lists."})
                        with lock:
                            code_ids.append(h.id)
                        k += 1
                        next_code = now + code_every_s
                    if now >= next_quick:
                        d.submit({"kind": "chat", "workflow": "failover", "cache": False,
                                  "prompt": f"What does error {k} mean? 429 Too Many Requests"})
                        next_quick = now + 1.0
                    time.sleep(0.02)
            except BaseException as exc:
                errors.append(exc)

        producer = threading.Thread(target=produce, name="failover-producer", daemon=True)
        producer.start()
        rng = random.Random(3)
        shortest_30b_s = 8.1 * scale  # the large profile's shortest answer (sim.answers)
        out: list[dict[str, Any]] = []
        for _trial in range(trials):
            if errors:
                raise errors[0]
            before = fleet.sim.counters("sim-gpu").get("chat", 0)
            deadline = time.monotonic() + 60 + 20 * scale
            while fleet.sim.counters("sim-gpu").get("chat", 0) == before:
                if time.monotonic() > deadline:
                    raise TimeoutError("no job reached the GPU host")
                fleet.check_workers()
                nap(0.01)
            # Kill it part-way through the answer, while a job is in flight.
            nap(rng.uniform(0.2, 0.7) * shortest_30b_s)
            t_kill = time.time()
            fleet.sim.down("sim-gpu")
            deadline = time.monotonic() + 60
            found = None
            while found is None:
                with lock:
                    ids = set(code_ids)
                found = _first_fallback(fleet, ids, t_kill)
                if time.monotonic() > deadline:
                    raise TimeoutError("no job fell back within 60 s")
                if found is None:
                    nap(0.05)
            job_id, t_done = found
            res = d.result(job_id)
            gave_up = [a for a in Ledger(fleet.r, fleet.config).job_attempts(job_id)
                       if a.outcome == "fallback"]
            out.append({"failover_s": rounded(t_done - t_kill), "job": job_id,
                        "detected_s": rounded(gave_up[0].ts - t_kill) if gave_up else None,
                        "trail": res.trail, "served_by": res.host,
                        "why": (gave_up[0].error or "")[:160] if gave_up else None})
            log(f"failover trial {_trial + 1}: {t_done - t_kill:.3f} s "
                f"({' -> '.join(res.trail)}; {out[-1]['why']})")
            # Bring the host back and wait until it serves again, so the next trial starts clean.
            fleet.sim.up("sim-gpu")
            t_up = time.time()
            deadline = time.monotonic() + 90 + 20 * scale
            while not _served_by(fleet, "sim-gpu", t_up):
                if time.monotonic() > deadline:
                    raise TimeoutError("the GPU host did not serve again after coming back")
                nap(0.1)
        stop.set()
        producer.join(timeout=5)
        times = [t["failover_s"] for t in out]
        return {
            "failover_s": rounded(statistics.median(times)),
            "failover_detail": {
                "trials": out, "scale": scale, "killed": "sim-gpu (local-gpu tier), mid-answer",
                "fallback_chain": fleet.config.tiers["local-gpu"].fallback,
                "measured": "host killed -> ledger time of the first job completed by a fallback tier",
                "reliability": {k: v for k, v in fleet.config.reliability.model_dump().items()
                                if k in ("health_timeout_s", "health_cache_s", "breaker_failures",
                                         "breaker_open_s")},
                "fallback_host_latency": "4B model ~0.3 s x scale",
                "arrivals": f"a code job every {code_every_s:g} s, a quick chat job every 1 s",
            },
        }
    finally:
        fleet.stop()


# -- 5. the home-lab day -----------------------------------------------------------------------


# What a home-lab user would set as the longest a job may wait for its turn: a code job no
# more than about one 30B answer (~8 s), a picture or a deep-reasoning question ~20 s
# (seconds at scale 1.0; the bench scales them). Quick jobs get none: the Mac keeps up.
USER_BUDGETS_S = {"code": 8.0, "vision": 20.0, "reasoning": 20.0}


def bench_home_lab_day(workdir: Path, scale: float, mode: str) -> dict[str, Any]:
    """``mode``: routed (the policy, no budgets), unrouted (everything on the 30B),
    spilled (routed with USER_BUDGETS_S: jobs spill to rented/paid tiers when the GPU
    queue would blow their budget)."""
    name = f"home-lab-{mode}"
    # One request at a time per host: the home lab's GPU box runs one model at a time.
    fleet = Fleet(workdir, name, scale=scale, host_parallel=1).start()
    try:
        for tier in ("local-mac", "local-gpu", "runpod", "paid"):
            fleet.worker(tier)  # runpod and paid only in case a job falls back or escalates
        config = fleet.config
        if mode == "spilled":
            budgets = {k: v * scale for k, v in USER_BUDGETS_S.items()}
            config = config.model_copy(update={"policy": config.policy.model_copy(
                update={"latency_budgets_s": budgets})})
        d = Dispatcher(config)
        jobs = _jobs.home_lab_day()
        if mode == "unrouted":
            jobs = _jobs.pinned(jobs, "local-gpu", "qwen3-coder:30b", "all30b")
        warm: dict[str, float] = {}
        if mode == "spilled":
            # A fleet that has run before knows how long its tiers take (P:svc, written by
            # the workers): "yesterday" is a handful of jobs, one per GPU model and Runpod.
            handles = d.submit_many(_jobs.yesterday())
            wait_results(d, [h.id for h in handles], 120 + 300 * scale, fleet.check_workers)
            svc_key = f"{config.key_prefix}:svc"
            warm = {t: round(float(v), 3) for t, v in fleet.r.hgetall(svc_key).items()}
            d._state = None  # read the fleet afresh, as a dispatcher would a second later
        t0 = time.time()
        handles = d.submit_many(jobs)
        results, t1 = wait_results(d, [h.id for h in handles], 120 + 900 * scale,
                                   fleet.check_workers)
        out = {
            "wall_s": rounded(t1 - t0, 2),
            "jobs": len(jobs), "ok": sum(x.ok for x in results),
            "first_tier": dict(Counter(h.route.tier for h in handles)),
            "final_tier": dict(Counter(x.tier or "?" for x in results)),
            "models": dict(Counter(x.model or "?" for x in results)),
            "moved": sum(len(x.trail) > 1 for x in results),
            "sum_job_latency_s": rounded(sum(x.latency_s for x in results), 2),
            "cost_usd": round(sum(x.cost_usd for x in results), 6),
        }
        if mode == "spilled":
            out["budgets_s"] = {k: rounded(v, 2) for k, v in
                                config.policy.latency_budgets_s.items()}
            out["service_time_s_at_submit"] = warm
            out["spilled"] = sum(any(r.stage == "load" for r in h.route.reasons) for h in handles)
        return out
    finally:
        fleet.stop()


# -- 6. cost of a day ------------------------------------------------------------------------


def bench_cost(workdir: Path, scale: float, runpod_scale: float) -> dict[str, Any]:
    # Runpod bills by the second: its host answers at the profiled latency whatever the scale.
    fleet = Fleet(workdir, "cost", scale=scale, host_scale={"sim-runpod": runpod_scale}).start()
    try:
        fleet.worker("rules", concurrency=2)
        for tier in ("local-mac", "local-gpu", "runpod"):
            fleet.worker(tier)
        fleet.worker("paid", concurrency=2)
        d = Dispatcher(fleet.config)

        def run_day(jobs: list[dict[str, Any]]) -> tuple[list[Result], Any]:
            handles = d.submit_many(jobs)
            results, _ = wait_results(d, [h.id for h in handles], 300 + 600 * scale,
                                      fleet.check_workers)
            return results, report("1d", by="tier", config=fleet.config, redis=fleet.r)

        day = _jobs.mixed_day()
        routed, rep = run_day(day)
        fleet.r.flushdb()  # the paid run starts from an empty ledger and cache
        paid, rep_paid = run_day(_jobs.as_paid(day))
        cut = 1 - rep.spend_usd / rep_paid.spend_usd if rep_paid.spend_usd else float("nan")
        return {
            "day_cost_cut": rounded(cut, 4),
            "day_cost_routed_usd": round(rep.spend_usd, 6),
            "day_cost_always_paid_usd": round(rep_paid.spend_usd, 6),
            "day_cost_detail": {
                "jobs": len(day), "kinds": dict(Counter(j["kind"] for j in day)),
                "routed_ok": sum(x.ok for x in routed), "paid_ok": sum(x.ok for x in paid),
                "routed_final_tier": dict(Counter(x.tier or "?" for x in routed)),
                "routed_spend_by_tier": {row.key: round(row.spend_usd, 6) for row in rep.rows},
                "report_baseline_model": rep.baseline_model,
                "report_baseline_usd": round(rep.baseline_usd, 6),
                "report_savings_fraction": (round(rep.savings_fraction, 4)
                                            if rep.savings_fraction is not None else None),
                "always_paid": "the same jobs pinned to the paid tier (rules jobs asked as prompts, "
                               "privacy internal); cost from the ledger of that run",
                "local_hardware_cost": "local hosts cost their configured cost_per_hour: 0 here",
                "scale": scale, "runpod_scale": runpod_scale,
            },
        }
    finally:
        fleet.stop()


# -- the run ---------------------------------------------------------------------------------


def run_parallel(tasks: dict[str, Callable[[], dict[str, Any]]],
                 results: dict[str, Any], errors: dict[str, str]) -> None:
    pool = cf.ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="bench")
    futures = {pool.submit(fn): name for name, fn in tasks.items()}
    try:
        for fut in cf.as_completed(futures):
            name = futures[fut]
            try:
                results[name] = fut.result()
                log(f"{name} done")
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                console.print(f"[red]{name} failed[/red]: {errors[name]}")
                traceback.print_exc()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="simulated latencies x 0.1, fewer messages")
    ap.add_argument("--tiny", action="store_true", help="smallest sizes (smoke test)")
    ap.add_argument("--scale", type=float, default=None,
                    help="simulated latency factor for the home-lab day and failover (default 1.0, "
                         "--quick 0.1)")
    ap.add_argument("--cost-scale", type=float, default=0.05,
                    help="latency factor of the cost day's hosts (cost does not depend on it, "
                         "except Runpod's, whose host stays at --scale)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs, worker logs)")
    ap.add_argument("--with-scale", type=int, default=0, metavar="JOBS",
                    help="also run bench/scale.py with this many jobs (make bench-scale alone)")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if args.scale is None:
        args.scale = 0.1 if (args.quick or args.tiny) else 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sz = TINY if args.tiny else QUICK if args.quick else FULL
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="tierfleet-bench-"))
    if not args.keep:
        CLEANUP.add(lambda: shutil.rmtree(workdir, ignore_errors=True))
    started = time.time()
    machine = machine_info()  # the load average before anything of ours runs
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    log(f"tierfleet bench: parts {', '.join(args.parts)}; scale {args.scale}; work folder {workdir}")
    try:
        # CPU-bound figures first, alone on the machine.
        for part, fn in (("dispatch", bench_dispatch), ("route", bench_route),
                         ("throughput", bench_throughput)):
            if part in args.parts:
                log(f"{part} ...")
                try:
                    results[part] = fn(workdir, sz)
                except Exception as exc:
                    errors[part] = f"{type(exc).__name__}: {exc}"
                    console.print(f"[red]{part} failed[/red]: {errors[part]}")
                    traceback.print_exc()
        # Then the waiting-bound ones side by side, each with its own Redis and workers.
        tasks: dict[str, Callable[[], dict[str, Any]]] = {}
        if "home_lab_day" in args.parts:
            for mode in ("routed", "unrouted", "spilled"):
                tasks[f"home_lab_day_{mode}"] = (
                    lambda m=mode: bench_home_lab_day(workdir, args.scale, m))  # type: ignore[misc]
        if "failover" in args.parts:
            tasks["failover"] = lambda: bench_failover(workdir, args.scale, sz.failover_trials)
        if "cost" in args.parts:
            tasks["cost"] = lambda: bench_cost(workdir, args.cost_scale, args.scale)
        if "ttft" in args.parts:
            # The host at the profiled speed whatever --scale: the figure is the fleet's overhead.
            tasks["ttft"] = lambda: ttft.bench_ttft(workdir, 1.0, sz.ttft_n)
        if tasks:
            log(f"{', '.join(tasks)} side by side ...")
            run_parallel(tasks, results, errors)
    except KeyboardInterrupt:
        STOP.set()
        console.print("[yellow]interrupted: stopping workers and Redis[/yellow]")
        CLEANUP.run()
        return 130
    finally:
        CLEANUP.run()
    if args.with_scale:
        import scale

        # Beside the results file: the work folder is gone by now (CLEANUP above).
        scale_out = args.out.with_name("scale.json")
        scale.main(["--jobs", str(args.with_scale), "--out", str(scale_out)])
        results["scale"] = json.loads(scale_out.read_text())
    out = assemble(results, errors, args, sz, time.time() - started, machine)
    print_table(out)
    dump_json(args.out, out)
    console.print(f"wrote {args.out}")
    return 1 if errors else 0


def assemble(results: dict[str, Any], errors: dict[str, str], args: argparse.Namespace, sz: Sizes,
             seconds: float, machine: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("dispatch", "throughput", "route", "failover", "cost", "ttft"):
        out.update(results.get(part, {}))
    routed, unrouted = results.get("home_lab_day_routed"), results.get("home_lab_day_unrouted")
    if routed and unrouted:
        out["home_lab_day_routed_s"] = routed["wall_s"]
        out["home_lab_day_unrouted_s"] = unrouted["wall_s"]
        out["home_lab_day_speedup"] = rounded(unrouted["wall_s"] / routed["wall_s"], 2)
        out["home_lab_day_scale"] = args.scale
        out["home_lab_day_detail"] = {
            "jobs": "30 quick, 5 code, 2 vision, 1 reasoning (the home-lab example day)",
            "workers": "one worker process per tier; simulated hosts answer one request at a time",
            "scale": args.scale, "routed": routed, "unrouted": unrouted,
            "unrouted_means": "every job pinned to tier local-gpu, model qwen3-coder:30b",
        }
    spilled = results.get("home_lab_day_spilled")
    if spilled:
        out["home_lab_day_spilled_s"] = spilled["wall_s"]
        out["home_lab_day_spilled_detail"] = spilled
        if routed:
            out["home_lab_day_spill_extra_usd"] = round(spilled["cost_usd"] - routed["cost_usd"], 6)
    order = ["dispatch_ratio", "dispatch_batch_ratio", "throughput_ratio", "route_p50_us",
             "route_p99_us", "failover_s", "home_lab_day_routed_s", "home_lab_day_unrouted_s",
             "home_lab_day_spilled_s", "home_lab_day_spill_extra_usd", "day_cost_cut",
             "ttft_ratio"]
    if "scale" in results:
        one = results["scale"]["one_redis"]
        out["scale_jobs_s_in"], out["scale_jobs_s_out"] = one["jobs_s_in"], one["jobs_s_out"]
        out["scale_detail"] = results["scale"]
    ordered = {k: out.pop(k) for k in order if k in out}
    return {
        **ordered, **out, "scale": args.scale,
        "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
        "sizes": sz.__dict__, "errors": errors, "bench_seconds": round(seconds, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "simulated_hosts": True,
    }


def print_table(out: dict[str, Any]) -> None:
    t = Table(title=f"tierfleet bench ({out['mode']}, simulated latency x {out['scale']}, "
                    f"{out['bench_seconds']:.0f} s)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("behind it")

    def row(key: str, fmt: str, behind: str) -> None:
        if key in out:
            t.add_row(key, format(out[key], fmt), behind)

    row("dispatch_ratio", ".3f", f"submit {out.get('dispatch_submit_jobs_s', '-')} jobs/s / bare "
        f"apply_async {out.get('dispatch_bare_jobs_s', '-')} jobs/s")
    row("dispatch_batch_ratio", ".3f", f"submit_many {out.get('dispatch_submit_many_jobs_s', '-')} "
        f"jobs/s / bare {out.get('dispatch_bare_jobs_s', '-')} jobs/s")
    row("throughput_ratio", ".3f", f"rules jobs {out.get('throughput_tierfleet_jobs_s', '-')} jobs/s "
        f"/ bare no-op {out.get('throughput_bare_jobs_s', '-')} jobs/s (1 node, prefork x2)")
    row("route_p50_us", ".1f", "Policy.route, auto job, 1,000-token prompt, idle fleet")
    row("route_p99_us", ".1f", "same")
    if "failover_s" in out:
        trials = [x["failover_s"] for x in out["failover_detail"]["trials"]]
        row("failover_s", ".3f", f"median of {len(trials)}: {trials}")
    if "home_lab_day_routed_s" in out:
        det = out["home_lab_day_detail"]
        row("home_lab_day_routed_s", ".1f", f"38 jobs routed, first tiers {det['routed']['first_tier']}")
        row("home_lab_day_unrouted_s", ".1f", f"38 jobs on the 30B; {out['home_lab_day_speedup']}x slower "
            f"than routed")
    if "home_lab_day_spilled_s" in out:
        det = out["home_lab_day_spilled_detail"]
        row("home_lab_day_spilled_s", ".1f", f"with budgets {det['budgets_s']}: {det['spilled']} "
            f"spilled, first tiers {det['first_tier']}")
    if "home_lab_day_spill_extra_usd" in out:
        row("home_lab_day_spill_extra_usd", ".4f", "what spilling cost over the routed day "
            f"(${out['home_lab_day_detail']['routed']['cost_usd']:.4f} routed)")
    if "scale_jobs_s_out" in out:
        one = out["scale_detail"]["one_redis"]
        row("scale_jobs_s_out", ".1f", f"{one['jobs']:,} jobs, {one['workers']} worker processes: in "
            f"{one['jobs_s_in']} jobs/s; Redis CPU peak {one['redis']['cpu_peak']}, "
            f"{one['redis_bytes_per_job']} B/job")
    if "day_cost_cut" in out:
        row("day_cost_cut", ".3f", f"${out['day_cost_routed_usd']:.4f} routed vs "
            f"${out['day_cost_always_paid_usd']:.4f} always-paid "
            f"(report estimate {out['day_cost_detail']['report_savings_fraction']})")
    if "ttft_ratio" in out:
        row("ttft_ratio", ".3f", f"time to first token through the fleet {out['ttft_fleet_p50_ms']} ms "
            f"(p95 {out['ttft_fleet_p95_ms']}) / straight {out['ttft_direct_p50_ms']} ms "
            f"(p95 {out['ttft_direct_p95_ms']}), {out['ttft_detail']['n']} each")
    console.print(t)
    if out["errors"]:
        console.print(f"[red]errors[/red]: {json.dumps(out['errors'], indent=1)}")


if __name__ == "__main__":
    sys.exit(main())
