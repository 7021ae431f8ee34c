"""``make demo``: the whole story on one machine, in a few minutes, with nothing installed.

1. the prompt inventory projected: monthly cost before and after routing;
2. the fleet up: a private Redis, a worker per tier, model hosts (the home-lab example fleet,
   SIMULATED on loopback, plus a REAL SmolLM2 on llama.cpp for the local-mac tier);
3. a day of jobs, with a progress bar;
4. the GPU box taken down halfway: the breaker opens and its jobs fall back
   (confidential ones only to local tiers);
5. the report: spend, savings against the always-paid baseline, the chart, Flower.

With ``--keep`` the fleet stays up and the OpenAI-compatible API starts on a free
loopback port with a fresh token; both are printed and written to ``<folder>/api.env``
as ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``, which the ``openai`` SDK reads by itself.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import FleetConfig
from .embedded import EmbeddedRedis
from .fleets import home_lab
from .processes import CeleryWorker, free_port

console = Console()

DEMO_KEYS = {"TIERFLEET_DEMO_RUNPOD_KEY": "demo-runpod-key", "TIERFLEET_DEMO_OPENAI_KEY": "demo-openai-key"}


def demo_config(redis_url: str, folder: Path, local_model_url: str | None) -> FleetConfig:
    """The home-lab example fleet: a Mac mini, an RTX 3060 box, Runpod Serverless and a paid
    provider (Claude models), with a real SmolLM2 as the Mac mini when it could start."""
    local_model = "smollm2:135m" if local_model_url else "qwen3:4b"
    mac_host: dict[str, Any] = (
        {"kind": "openai", "url": local_model_url, "models": [local_model],
         "context_window": 4096, "timeout_s": 120, "simulated": None}
        if local_model_url else {"timeout_s": 30}
    )
    data = home_lab(
        names={"mac": "mac-mini", "gpu": "rtx-3060", "runpod": "runpod-serverless",
               "paid": "provider"},
        key_envs={"runpod": "TIERFLEET_DEMO_RUNPOD_KEY", "paid": "TIERFLEET_DEMO_OPENAI_KEY"},
        overrides={
            "redis_url": redis_url,
            "key_prefix": "tierfleet-demo",
            "tiers": {
                "rules": {"concurrency": 2},
                "local-mac": {"models": {"default": local_model}},
                "paid": {"models": {"default": "claude-sonnet-4-6"}},
            },
            "hosts": {
                "mac-mini": mac_host,
                "rtx-3060": {"timeout_s": 30, "connect_timeout_s": 1},
                "runpod-serverless": {"url": "http://127.0.0.1:0/v2/demo-endpoint", "timeout_s": 60},
                "provider": {"models": ["claude-sonnet-4-6", "claude-opus-4-7"],
                             "context_window": 200000, "timeout_s": 60},
            },
            "models": {
                "qwen3:4b": None, "gpt-5.5": None,
                "granite3.2-vision:2b": {"context_window": None},  # the GPU box's 32k
                local_model: {"input_per_mtok": 0.0, "output_per_mtok": 0.0,
                              "context_window": 4096 if local_model_url else 32768},
                "claude-sonnet-4-6": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
                "claude-opus-4-7": {"input_per_mtok": 5.0, "output_per_mtok": 25.0},
            },
            "reliability": {"heartbeat_s": 1.0, "dead_after_s": 6.0, "breaker_open_s": 20.0,
                            "breaker_failures": 1, "health_cache_s": 1.0, "max_attempts": 10,
                            "park_backoff_s": [2, 4, 8, 15]},
            "ledger": {"dir": str(folder / "ledger")},
        },
    )
    return FleetConfig(**data)


_TICKETS = ["my VPN drops every ten minutes", "Outlook keeps asking for my password",
            "the printer on floor 2 jams", "cannot open email attachments",
            "VPN client will not install", "new monitor flickers"]
_TOPICS = ["the release slipped a day", "the database failover test passed",
           "two customers reported slow exports", "the on-call rota changes next week"]
_PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


def a_day_of_jobs(seed: int = 11) -> list[dict[str, Any]]:
    """A support-and-engineering day: rules work, quick local work, code, vision, risk."""
    rng = random.Random(seed)
    jobs: list[dict[str, Any]] = []
    for i in range(24):
        jobs.append({"kind": "keyword_route", "workflow": "support-triage",
                     "input": {"text": f"#{i}: {rng.choice(_TICKETS)}"}})
    for i in range(6):
        log = "\n".join(f"2026-11-21 03:{m:02d}:00 {lvl} payment worker {i}: step {m}"
                        for m, lvl in zip(range(0, 60, 5), ["INFO", "WARN", "ERROR"] * 4,
                                          strict=False))
        jobs.append({"kind": "log_slice", "workflow": "ops-logs",
                     "input": {"text": log, "levels": ["WARN", "ERROR"], "start": "03:00",
                               "end": "03:30"}})
    for i in range(18):
        jobs.append({"kind": "summary", "workflow": "inbox", "max_tokens": 60,
                     "privacy": "confidential" if i % 3 == 0 else "internal",
                     "prompt": f"Summarize in one sentence for the on-call lead: "
                               f"{rng.choice(_TOPICS)}, and {rng.choice(_TOPICS)}."})
    for _ in range(8):
        jobs.append({"kind": "classification", "workflow": "support-triage", "max_tokens": 12,
                     "prompt": "Label this ticket as network, email or hardware: "
                               + rng.choice(_TICKETS)})
    for i in range(4):
        jobs.append({"kind": "extraction", "workflow": "invoices", "privacy": "confidential",
                     "max_tokens": 80,
                     "prompt": "Extract supplier, date and total: "
                               f"ACME Ltd, 2026-11-{10 + i}, EUR {100 + i}.00"})
    for i in range(6):
        jobs.append({"kind": "code", "workflow": "coding", "max_tokens": 120,
                     "privacy": "confidential" if i % 2 else "internal",
                     "prompt": f"Write a Python function that validates order number {i} and add tests."})
    for _ in range(2):
        jobs.append({"kind": "vision", "workflow": "screenshots", "images": [_PIXEL], "max_tokens": 80,
                     "prompt": "Which error dialog is shown in this screenshot?"})
    jobs.append({"kind": "reasoning", "workflow": "design-review", "max_tokens": 200,
                 "prompt": "Prove that the retry schedule 1, 2, 4, 8 s never exceeds the 30 s budget."})
    for i in range(3):
        jobs.append({"kind": "writing", "workflow": "announcements", "risk": "high", "max_tokens": 200,
                     "prompt": f"Write the customer announcement {i} for the new export feature."})
    for p in ["Translate 'the export is ready' into German.",
              "What does HTTP 429 mean?",
              "Refactor this class to remove the race condition in the cache refresh.",
              "Why might a Celery worker stop consuming after a Redis restart? Compare two causes."]:
        jobs.append({"kind": "auto", "workflow": "assistant", "prompt": p, "max_tokens": 80})
    rng.shuffle(jobs)
    return jobs


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _start_worker(tier: str, concurrency: int, config_path: Path, folder: Path,
                  procs: list[subprocess.Popen[bytes]]) -> None:
    worker = CeleryWorker(tier, config_path, name=f"{tier}@demo", concurrency=concurrency)
    with (folder / f"worker-{tier}.log").open("ab") as log:
        procs.append(worker.popen(log))


def _start_api(config: FleetConfig, cfg_path: Path, folder: Path,
               procs: list[subprocess.Popen[bytes]]) -> tuple[str, str]:
    """``tierfleet api`` on a free loopback port with a fresh token; the URL and token also
    go to ``folder/api.env`` as the variables the ``openai`` SDK reads by itself."""
    import secrets
    import sys

    import httpx

    port = free_port()
    token = "tf-demo-" + secrets.token_hex(12)
    env = {**os.environ, config.api.tokens_env: token}
    with (folder / "api.log").open("ab") as log:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tierfleet", "api", "--port", str(port), "--config",
             str(cfg_path), "--log-level", "warning"], env=env, stdout=log, stderr=log))
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                break
        if procs[-1].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start; see {folder / 'api.log'}")
        time.sleep(0.2)
    (folder / "api.env").write_text(f"export OPENAI_BASE_URL={url}\nexport OPENAI_API_KEY={token}\n")
    return url, token


def _wait_for_workers(client: Any, config: FleetConfig, tiers: list[str], timeout: float = 60) -> None:
    from ..reaper import live_workers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = {q for w in live_workers(client, config) for q in w.get("queues", [])}
        if set(tiers) <= up:
            return
        time.sleep(0.2)
    raise RuntimeError(f"workers did not start: missing {sorted(set(tiers) - up)}")


def _inventory(config: FleetConfig, folder: Path) -> None:
    from ..reports.inventory import plot_inventory, project

    csv_path = Path(str(files("tierfleet.lab").joinpath("demo_data", "inventory.csv")))
    inv = project(csv_path, config)
    t = Table(title="1. prompt inventory: projected monthly cost (before anything runs)")
    for c in ("workflow", "kind", "volume/mo", "tier", "before", "after"):
        t.add_column(c, justify="right" if c in ("volume/mo", "before", "after") else "left")
    for r in inv.rows:
        t.add_row(r.workflow, r.kind, f"{r.monthly_volume:,}", r.tier,
                  f"${r.cost_before_usd:,.2f}", f"${r.cost_after_usd:,.2f}")
    console.print(t)
    chart = plot_inventory(inv, folder / "inventory.png")
    frac = f"{inv.savings.fraction:.0%}" if inv.savings.fraction is not None else "n/a"
    console.print(f"   all on {inv.baseline_model}: [bold]${inv.total_before_usd:,.2f}[/]/month; "
                  f"routed: [bold green]${inv.total_after_usd:,.2f}[/]/month (saves {frac}); "
                  f"chart: {chart}")


def run(*, folder: Path, redis_url: str | None = None, real_model: bool = True,
        scale: float = 0.05, keep: bool = False) -> int:
    from ..dispatch import Dispatcher
    from ..health import Breaker
    from ..reports.spend import plot_report, report
    from .sim import SimFleet
    from .sim import write_config as write_sim_config

    folder.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    console.print(Panel(
        "Rules first, a small local model second, a rented GPU when local is not enough, a paid "
        "model for quality and risk. Hosts marked SIMULATED answer on loopback with the profiled "
        "latencies; the local-mac tier runs a REAL SmolLM2-135M on this CPU.",
        title="tierfleet demo"))
    shutil.rmtree(folder / "redis", ignore_errors=True)  # each run starts from an empty day
    os.environ.update(DEMO_KEYS)
    with contextlib.ExitStack() as stack, _processes() as procs:
        server = None
        if redis_url is None:
            server = stack.enter_context(EmbeddedRedis(folder=str(folder / "redis")))
            redis_url = server.url
            console.print(f"   private Redis on {redis_url} (embedded, stops at the end)")
        local_url = None
        if real_model:
            try:
                from .localmodel import LocalModelServer

                lm = stack.enter_context(LocalModelServer(port=0))
                local_url = lm.url
                console.print(f"   REAL local model: SmolLM2-135M on llama.cpp at {local_url}")
            except Exception as exc:  # the demo goes on with a simulated Mac mini
                console.print(f"   [yellow]local model unavailable ({exc}); simulating it[/]")
        base = demo_config(redis_url, folder, local_url)
        _inventory(base, folder)

        sim = stack.enter_context(SimFleet.from_config(base, scale=scale, free_ports=True))
        config = sim.config
        cfg_path = write_sim_config(config, folder / "fleet.toml")
        for tier, tc in config.tiers.items():
            _start_worker(tier, tc.concurrency, cfg_path, folder, procs)
        flower_port = free_port()
        from ..flower import flower_command

        fc = flower_command(cfg_path, port=flower_port)
        procs.append(subprocess.Popen(fc.argv, env=fc.env, stdout=subprocess.DEVNULL,
                                      stderr=(folder / "flower.log").open("ab")))
        d = Dispatcher(config)
        _wait_for_workers(d.r, config, list(config.tiers))
        hosts = ", ".join(f"{n} ({'SIMULATED' if h.simulated else 'REAL'})"
                          for n, h in config.hosts.items())
        console.print(f"\n2. fleet up: a worker per tier ({', '.join(config.tiers)}); hosts: {hosts}")
        console.print(f"   Flower: {fc.url}")

        jobs = a_day_of_jobs()
        half = len(jobs) // 2
        console.print(f"\n3. a day of {len(jobs)} jobs; halfway, the RTX 3060 box goes down")
        handles = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("jobs done", total=len(jobs))
            handles += d.submit_many(jobs[:half])
            d.results_for([h.id for h in handles], timeout=600,
                          on_progress=lambda n, _t: bar.update(task, completed=n))
            sim.down("rtx-3060")
            bar.console.print("   [bold red]rtx-3060 is down[/] (connection refused from now on)")
            handles += d.submit_many(jobs[half:])
            results = d.results_for([h.id for h in handles], timeout=600,
                                    on_progress=lambda n, _t: bar.update(task, completed=n))

        outcome = Counter(r.status.value for r in results)
        fell = [r for r in results if len(r.trail) > 1]
        breaker = Breaker(d.r, config)
        console.print(f"\n4. after the host died: breaker on rtx-3060 is "
                      f"[bold]{breaker.view('rtx-3060').state}[/]; {len(fell)} job(s) moved on:")
        for r in fell[:8]:
            job = next(j for j, h in zip(jobs, handles, strict=True) if h.id == r.job_id)
            console.print(f"   {r.kind:<14} {job.get('privacy', 'internal'):<12} "
                          f"{' -> '.join(r.trail)}")
        conf_off_local = [r for r, j in zip(results, jobs, strict=True)
                          if j.get("privacy") == "confidential"
                          and set(r.trail) - {"rules", "local-mac", "local-gpu"}]
        console.print(f"   confidential jobs that left local tiers: {len(conf_off_local)}")
        lost = len(jobs) - outcome["succeeded"] - outcome["failed"] - outcome["dead"]
        console.print(f"   jobs in: {len(jobs)}, out: {sum(outcome.values())} {dict(outcome)}, "
                      f"lost: {lost}")
        if outcome["dead"]:
            console.print("   dead letters wait in `tierfleet dlq list`; `tierfleet dlq replay --all` "
                          "runs them again")

        rep = report(since="1d", by="workflow", config=config, redis=d.r)
        t = Table(title="5. the bill for the day (tierfleet report --by workflow)")
        for c in ("workflow", "jobs", "spend", f"all on {rep.baseline_model}", "saved", "p95 s",
                  "fallback"):
            t.add_column(c, justify="left" if c == "workflow" else "right")
        for row in rep.rows:
            t.add_row(row.key, str(row.jobs), f"${row.spend_usd:.4f}", f"${row.baseline_usd:.4f}",
                      f"{row.savings_fraction:.0%}" if row.savings_fraction is not None else "-",
                      f"{row.latency_p95_s:.2f}" if row.latency_p95_s is not None else "-",
                      f"{row.fallback_rate:.0%}" if row.fallback_rate is not None else "-")
        console.print(t)
        chart = plot_report(rep, folder / "report.png")
        share = ", ".join(f"{k} {v:.0%}" for k, v in sorted(rep.tier_share.items(), key=lambda x: -x[1]))
        saved = f"{rep.savings_fraction:.0%}" if rep.savings_fraction is not None else "n/a"
        console.print(
            f"   spend ${rep.spend_usd:.4f} vs ${rep.baseline_usd:.4f} all on {rep.baseline_model}: "
            f"[bold green]saved {saved}[/]\n   where jobs finished: {share}\n"
            f"   chart: {chart}\n   Flower: {fc.url}  (ledger: {folder / 'ledger'})\n"
            f"   done in {time.monotonic() - t_start:.0f} s")
        if keep:
            api_url, token = _start_api(config, cfg_path, folder, procs)
            console.print(f"   --keep: the fleet and Flower keep running (Flower still at {fc.url}); "
                          "Ctrl-C stops them")
            console.print(f"   OpenAI-compatible API: [bold]{api_url}[/] (token {token}); for the "
                          f"README's SDK examples:\n     source {folder / 'api.env'}", soft_wrap=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
        return 1 if lost or conf_off_local else 0
