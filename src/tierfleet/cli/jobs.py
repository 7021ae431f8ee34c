"""Commands for producers and machine owners: submit, result, status, dlq, worker, reaper."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..errors import JobRejected
from ..inputs import loads_strict, safe_text
from ..jobs import Status
from ._common import clear_errors, config_option, console, err_console, fail, get


def _dispatcher(config_path: str | None) -> Any:
    from ..dispatch import Dispatcher

    cfg = get(config_path)
    with clear_errors():  # no Redis chosen, a bad Sentinel URL: one line, not a traceback
        return Dispatcher(cfg)
    raise AssertionError  # unreachable: clear_errors exits


def _reject(message: str) -> NoReturn:
    """One line on stderr, exit 2. The text may quote user input: make it printable
    (no unpaired surrogates) and inert (no rich markup in a field name like ``[/x]``)."""
    err_console.print("[bold red]error:[/] " + escape(safe_text(message)), soft_wrap=True)
    raise typer.Exit(2)


def _check_timeout(timeout: float | None) -> None:
    # click reads "nan" as a float, and a NaN deadline is never reached: the wait would
    # never end. (inf is allowed: it says "wait for ever" on purpose.)
    if timeout is not None and math.isnan(timeout):
        fail("--timeout must be a number of seconds, not nan")


def _parse_json(text: str | bytes, where: str) -> Any:
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        _reject(f"{where}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    except RecursionError:
        _reject(f"{where}: nested too deeply to read")
    except ValueError as exc:  # NaN / Infinity
        _reject(f"{where}: not JSON ({exc})")


def _read_jobs(path: Path) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    try:
        stream = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    except OSError as exc:
        _reject(f"--file: cannot read {path}: {exc.strerror}")
    with stream:
        for n, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _reject(f"{path}:{n}: not UTF-8 text (byte {exc.start + 1})")
            obj = _parse_json(line, f"{path}:{n}")
            if not isinstance(obj, dict):
                _reject(f"{path}:{n}: each line must be a JSON object")
            jobs.append(obj)
    if not jobs:
        _reject(f"--file: {path} holds no jobs")
    return jobs


def _print_result(r: Any) -> None:
    """One result: a coloured status line, then the answer verbatim (never parsed as rich
    markup, never cut or wrapped: an answer quoting ``[/x]`` prints as it is)."""
    colour = "green" if r.ok else "red"
    head = Text.assemble((r.status.value, colour), f" {r.job_id} via {' -> '.join(r.trail)}:")
    console.print(head, soft_wrap=True)
    if r.ok:
        out = r.text if r.text is not None else json.dumps(r.output, ensure_ascii=False)
    else:
        out = r.error or ""
    sys.stdout.write(safe_text(str(out)) + "\n")
    sys.stdout.flush()


def _warn_unserved(d: Any, handles: list[Any]) -> None:
    """Before waiting: say at once when a job's tier has no live worker (it would sit in
    its queue until one starts, and the wait would end only at --timeout)."""
    from ..heartbeats import live_workers

    served = {q for w in live_workers(d.redis, d.config) for q in w.get("queues", [])}
    waiting: dict[str, int] = {}
    for h in handles:
        if h.route.tier not in served:
            waiting[h.route.tier] = waiting.get(h.route.tier, 0) + 1
    for tier, n in waiting.items():
        err_console.print(Text(f"warning: no live worker on tier {tier}: {n} job(s) wait in its "
                               f"queue until one starts (tierfleet worker -t {tier})"),
                          style="yellow", soft_wrap=True)


def rules_inputs_help() -> str:
    """Each rules kind's ``--input`` fields, read from its pydantic model (the same models
    validate the input, so this text cannot drift from what is accepted)."""
    from ..jobs import RULES_KINDS
    from ..rules import input_schema

    lines = ["Rules kinds take --input JSON (docs/rules.md has the detail):"]
    for kind in sorted(k.value for k in RULES_KINDS):
        schema = input_schema(kind)
        required = set(schema.get("required", []))
        fields = [f"{name}{'*' if name in required else ''}"
                  for name in schema.get("properties", {})]
        lines.append(f"  {kind}: {', '.join(fields)}")
    lines += ["  (* required)  e.g. --kind dedupe --input '{\"items\": [\"a\", \"a \"]}'"]
    return "\n\n".join(lines)


def register(app: typer.Typer) -> None:
    dlq = typer.Typer(help="Dead-letter queue: jobs given up on after every retry.")
    app.add_typer(dlq, name="dlq")

    @app.command(epilog=rules_inputs_help())
    def submit(
        prompt: str = typer.Argument(None, help="prompt text (or use --file)"),
        kind: str = typer.Option("auto", help="job kind (auto lets the classifier decide)"),
        input_json: str = typer.Option(None, "--input", help="JSON payload for rules kinds"),
        risk: str = typer.Option("low"),
        privacy: str = typer.Option("internal"),
        workflow: str = typer.Option("default"),
        tier: str = typer.Option(None, help="explicit tier (within privacy)"),
        model: str = typer.Option(None, help="explicit model (within privacy)"),
        session: str = typer.Option(None),
        file: Path = typer.Option(None, "--file", "-f", help="JSONL, one job object per line ('-' = stdin)"),
        wait: bool = typer.Option(False, help="wait for the results"),
        timeout: float = typer.Option(300.0, help="seconds to wait with --wait"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object per line"),
        config: str = config_option(),
    ) -> None:
        """Submit one job from flags, or many from a JSONL file."""
        _check_timeout(timeout)
        if file is not None:
            jobs = _read_jobs(file)
        elif prompt is not None or input_json is not None:
            job: dict[str, Any] = {"kind": kind, "risk": risk, "privacy": privacy,
                                   "workflow": workflow}
            if prompt is not None:
                job["prompt"] = prompt
            if input_json is not None:
                job["input"] = _parse_json(input_json, "--input")
            for k, v in (("tier", tier), ("model", model), ("session", session)):
                if v is not None:
                    job[k] = v
            jobs = [job]
        else:
            fail("give a PROMPT, --input for a rules kind, or --file jobs.jsonl")
        d = _dispatcher(config)
        with clear_errors():
            try:
                handles = d.submit_many(jobs) if len(jobs) > 1 else [d.submit(jobs[0])]
            except JobRejected as exc:
                _reject(f"job rejected: {exc.field}: {exc.message}")
            if not wait:
                for h in handles:
                    if as_json:
                        print(json.dumps({"id": h.id, "tier": h.route.tier, "kind": h.route.kind.value,
                                          "model": h.route.model, "status": "pending"}))
                    else:
                        console.print(f"{h.id}  -> {h.route.tier} ({h.route.kind.value}"
                                      f"{', ' + h.route.model if h.route.model else ''})")
                return
            ids = [h.id for h in handles]
            _warn_unserved(d, handles)
            if as_json:
                results = d.results_for(ids, timeout)
            else:
                with Progress(TextColumn("waiting for results"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, transient=True) as bar:
                    task = bar.add_task("wait", total=len(ids))
                    results = d.results_for(ids, timeout,
                                            on_progress=lambda n, _t: bar.update(task, completed=n))
        failed = 0
        for r in results:
            failed += not r.ok
            if as_json:
                print(r.model_dump_json())
            else:
                _print_result(r)
        if failed:
            raise typer.Exit(1)

    @app.command()
    def result(
        job_id: str,
        timeout: float = typer.Option(None, help="wait up to this many seconds"),
        config: str = config_option(),
    ) -> None:
        """Print a job's result as JSON (status pending while it runs; exit 1 when Redis
        has no record of the id)."""
        _check_timeout(timeout)
        d = _dispatcher(config)
        with clear_errors():
            r = d.result(job_id, timeout)
        print(r.model_dump_json(indent=2))
        if r.status is Status.UNKNOWN:
            # The JSON stays on stdout for a script; the exit and stderr tell a person or a
            # shell `&&` that there is no such job (exit 1, as `submit --wait` gives it).
            err_console.print("[bold red]error:[/] " + escape(safe_text(f"{job_id}: {r.error}")),
                              soft_wrap=True)
            raise typer.Exit(1)

    @app.command()
    def status(
        as_json: bool = typer.Option(False, "--json"),
        config: str = config_option(),
    ) -> None:
        """Queues and depths, workers per tier, hosts and breakers, parked jobs, dead letters."""
        d = _dispatcher(config)
        with clear_errors():
            st = d.status()
        if as_json:
            print(json.dumps(st, indent=2))
            return
        t = Table(title="queues")
        for c in ("tier", "place", "depth", "nodes", "processes", "busy nodes"):
            t.add_column(c)
        for q in st["queues"]:
            t.add_row(q["tier"], q["place"], str(q["depth"]), str(q["nodes"]),
                      str(q["processes"]), str(q["busy_nodes"]))
        console.print(t)
        w = Table(title="worker nodes")
        for c in ("node", "queues", "processes", "holding", "state"):
            w.add_column(c)
        for x in st["workers"]:
            w.add_row(Text(str(x["node"])), ",".join(x["queues"]), str(x["processes"]),
                      str(x["held"]), "busy" if x["busy"] else "idle")
        console.print(w)
        if st["parked"]:
            pk = Table(title="parked (waiting for an allowed tier)")
            pk.add_column("id", no_wrap=True, overflow="ignore",
                          min_width=max(len(x["id"]) for x in st["parked"]))
            for c in ("next try in s", "tries left", "reason"):
                pk.add_column(c)
            for x in st["parked"]:
                pk.add_row(x["id"], f"{x['next_try_in_s']:.1f}", str(x["tries_left"]),
                           Text(str(x.get("reason") or "")))
            console.print(pk)
        h = Table(title="hosts")
        for c in ("host", "breaker", "failures", "open for s", "reason"):
            h.add_column(c)
        for x in st["hosts"]:
            colour = {"closed": "green", "open": "red"}.get(x["state"], "yellow")
            h.add_row(x["host"], Text(x["state"], style=colour), str(x["failures"]),
                      str(x["open_for_s"]), Text(str(x["reason"] or "")))
        console.print(h)
        console.print(f"in flight: {st['in_flight']}   parked: {len(st['parked'])}   "
                      f"dead letters: {len(st['dead_letters'])}")

    @dlq.command("list")
    def dlq_list(as_json: bool = typer.Option(False, "--json"), config: str = config_option()) -> None:
        """Jobs in the dead-letter queue, with why they were given up."""
        from ..broker import redis_client
        from ..shown import shown_dead_letter
        from ..store import Parking

        cfg = get(config)
        with clear_errors():
            # An operator's view: a confidential job's words and forbidden tiers redacted.
            dead = [shown_dead_letter(d, cfg) for d in Parking(redis_client(cfg), cfg).dead()]
        if as_json:
            print(json.dumps(dead, indent=2, ensure_ascii=False))
            return
        # Plain lines, not a table: a table fits a narrow terminal by cutting cells, and
        # the id is what ``dlq replay`` needs whole. Nothing is parsed as markup.
        width = max([len(d["id"]) for d in dead] or [2])
        print(f"dead letters ({len(dead)})")
        if dead:
            print(f"{'id':<{width}}  kind  workflow  reason")
        for d in dead:
            job = d["delivery"]["job"]
            print(safe_text(f"{d['id']:<{width}}  {job.get('kind', '')}  "
                            f"{job.get('workflow', '')}  {d.get('reason') or ''}"))

    @dlq.command("replay")
    def dlq_replay(
        job_id: str = typer.Argument(None),
        all_: bool = typer.Option(False, "--all", help="replay every dead letter"),
        config: str = config_option(),
    ) -> None:
        """Send dead letters back to their first tier, with a fresh retry budget."""
        from ..replay import replay

        if not job_id and not all_:
            fail("give a job ID or --all")
        cfg = get(config)
        with clear_errors():
            n = replay(cfg, None if all_ else job_id)
        if n == 0 and job_id:
            fail(f"no dead letter with id {job_id}")
        console.print(f"replayed {n} job(s)")

    @app.command()
    def worker(
        tier: str = typer.Option(
            ..., "--tier", "-t", help="tier (queue) this machine serves; a,b for several"
        ),
        concurrency: int = typer.Option(None, "--concurrency", "-c"),
        name: str = typer.Option(None, help="node name (default TIER@hostname)"),
        pool: str = typer.Option("prefork", help="prefork, threads or solo"),
        loglevel: str = typer.Option("INFO"),
        config: str = config_option(),
    ) -> None:
        """Start a worker for a tier (wraps `celery -A tierfleet.worker worker -Q TIER`)."""
        cfg = get(config)
        tiers = tier.split(",")
        unknown = [t for t in tiers if t not in cfg.tiers]
        if unknown:
            fail(f"unknown tier {', '.join(unknown)}; known: {', '.join(cfg.tiers)}")
        if config:
            os.environ["TIERFLEET_CONFIG"] = str(Path(config).resolve())
        # Standard library only: a worker machine needs no lab extra for this.
        from ..lab.processes import CeleryWorker

        conc = concurrency or max(cfg.tiers[t].concurrency for t in tiers)
        argv = CeleryWorker(tier, name=name, concurrency=conc, pool=pool, loglevel=loglevel).argv()
        sys.stdout.flush()
        os.execv(sys.executable, argv)

    @app.command()
    def reaper(config: str = config_option()) -> None:
        """Restore jobs of dead nodes, re-enqueue parked jobs, repair open jobs with no
        message, and export the ledger's JSONL (all of which also run inside every worker)."""
        from ..broker import make_celery, redis_client
        from ..ledger import LedgerExport
        from ..reaper import Reaper

        cfg = get(config)
        r = Reaper(cfg, redis_client(cfg), make_celery(cfg))
        console.print(f"reaper running against {cfg.redis_url.split('@')[-1]} (Ctrl-C to stop)")
        stop = threading.Event()
        threading.Thread(target=LedgerExport(redis_client(cfg), cfg).run_forever, args=(stop,),
                         name="tierfleet-ledger-export", daemon=True).start()
        try:
            r.run_forever(stop)
        except KeyboardInterrupt:
            stop.set()
