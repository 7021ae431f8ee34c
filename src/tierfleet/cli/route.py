"""``tierfleet route`` (one prompt, or a batch file) and ``tierfleet train``.

Routing here needs no Redis: the fleet is taken as idle unless ``--state`` gives
a snapshot, and a session's history can be given with ``--recent``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from ..config import FleetConfig
from ..errors import TierfleetError
from ..jobs import RULES_KINDS, Job, Kind, Privacy, Risk, Route, UserTier
from ..policy import FleetState, Policy
from . import _common

_JOB_FIELDS = frozenset(Job.model_fields)
_CHUNK = 4096  # jobs routed per pass in a batch: one tokenizer/model call each


def _state(raw: str | None, session: str | None, recent: str | None) -> FleetState:
    data: dict[str, Any] = {}
    if raw:
        text = Path(raw[1:]).read_text(encoding="utf-8") if raw.startswith("@") else raw
        try:
            data = json.loads(text)
        except ValueError as exc:
            _common.fail(f"--state: not JSON ({exc})")
        if not isinstance(data, dict):
            _common.fail("--state: expected a JSON object")
        allowed = {"queue_depth", "live_workers", "service_time_s", "open_hosts", "session_tiers"}
        extra = set(data) - allowed
        if extra:
            _common.fail(f"--state: unknown fields {sorted(extra)}; known: {sorted(allowed)}")
    if recent:
        if not session:
            _common.fail("--recent needs --session")
        data.setdefault("session_tiers", {})[session] = [k.strip() for k in recent.split(",") if k.strip()]
    try:
        return FleetState(
            queue_depth={str(k): int(v) for k, v in data.get("queue_depth", {}).items()},
            live_workers={str(k): int(v) for k, v in data.get("live_workers", {}).items()},
            service_time_s={str(k): float(v) for k, v in data.get("service_time_s", {}).items()},
            open_hosts=frozenset(str(h) for h in data.get("open_hosts", [])),
            session_tiers={str(k): [str(x) for x in v] for k, v in data.get("session_tiers", {}).items()},
        )
    except (TypeError, ValueError, AttributeError) as exc:
        _common.fail(f"--state: {exc}")
        raise


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ())) or "job"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def route_record(route: Route, job: Job | None = None) -> dict[str, Any]:
    """One output line of ``route --batch``."""
    out: dict[str, Any] = {}
    if job is not None:
        out["id"] = job.id
    out.update(
        kind=route.kind.value,
        tier=route.tier,
        model=route.model,
        host=route.host,
        p_small_ok=route.p_small_ok if route.p_small_ok is not None else 1.0,
        tokens_in=route.tokens_in,
        fallbacks=route.fallbacks,
        review=route.review,
        reasons=route.explain(),
    )
    return out


def _lines(fh: IO[str]) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(fh, 1):
        if line.strip():
            yield n, line


def route_batch(
    policy: Policy, src: IO[str], dst: IO[str], state: FleetState, config: FleetConfig
) -> dict[str, Any]:
    """Route every line of ``src`` to one line of ``dst``, same order; returns counts."""
    unknown: Counter[str] = Counter()
    stats = {"jobs": 0, "routed": 0, "errors": 0, "lines_with_unknown_fields": 0}
    limit = config.limits.max_prompt_chars
    pending: list[tuple[int, Job | str]] = []

    def flush() -> None:
        jobs = [j for _, j in pending if isinstance(j, Job)]
        routes = iter(policy.route_each(jobs, state))
        for n, item in pending:
            if isinstance(item, str):
                rec: dict[str, Any] = {"line": n, "error": item}
                stats["errors"] += 1
            else:
                r = next(routes)
                if isinstance(r, TierfleetError):
                    rec = {"line": n, "id": item.id, "error": str(r)}
                    stats["errors"] += 1
                else:
                    rec = {"line": n, **route_record(r, item)}
                    stats["routed"] += 1
            dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
        pending.clear()

    for n, line in _lines(src):
        stats["jobs"] += 1
        item: Job | str
        if len(line) > config.limits.max_payload_bytes:
            item = f"line is over limits.max_payload_bytes ({config.limits.max_payload_bytes})"
        else:
            try:
                data = json.loads(line)
            except ValueError as exc:
                data, item = None, f"not JSON: {exc}"
            if data is not None:
                if not isinstance(data, dict):
                    item = "expected a JSON object per line"
                else:
                    extra = set(data) - _JOB_FIELDS
                    if extra:
                        unknown.update(extra)
                        stats["lines_with_unknown_fields"] += 1
                    try:
                        item = Job(**{k: v for k, v in data.items() if k in _JOB_FIELDS})
                    except ValidationError as exc:
                        item = _validation_message(exc)
                    except TypeError as exc:
                        item = f"job: {exc}"
                    if isinstance(item, Job) and len(item.text()) > limit:
                        item = f"prompt: {len(item.text())} characters, over limits.max_prompt_chars {limit}"
        pending.append((n, item))
        if len(pending) >= _CHUNK:
            flush()
    flush()
    stats["unknown_fields"] = dict(unknown.most_common(20))
    return stats


def _show(route: Route, explain: bool, policy: Policy, job: Job) -> None:
    console = _common.console
    t = Table(title="route", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("tier", route.tier)
    t.add_row("kind", route.kind.value)
    t.add_row("model", route.model or "-")
    t.add_row("host", route.host or "-")
    t.add_row("fallbacks", " -> ".join(route.fallbacks) or "-")
    t.add_row("p_small_ok", f"{route.p_small_ok:.3f}" if route.p_small_ok is not None else "-")
    t.add_row("tokens in", f"{route.tokens_in:,}")
    if route.review:
        t.add_row("review", "[yellow]yes[/]")
    console.print(t)
    reasons = Table(title="reasons", title_justify="left")
    reasons.add_column("stage", style="cyan")
    reasons.add_column("why")
    for r in route.reasons:
        reasons.add_row(r.stage, r.text)
    console.print(reasons)
    if explain:
        sig = policy.reader.read(job.text())
        g = sig.guess
        console.print(
            f"signals: {sig.tokens_in:,} tokens; classifier says {g.describe()}; "
            f"p_small_ok {sig.p_small_ok:.3f} ({sig.p_method}); models from {policy.reader.models.where}"
        )
        for p in policy.reader.models.problems:
            console.print(f"[yellow]artifact problem:[/] {p}")
        costs = Table(title="tiers for this job", title_justify="left")
        for col in ("tier", "place", "model", "window", "est. cost $", "privacy"):
            costs.add_column(col)
        fleet = policy.fleet
        out = job.max_tokens or 512
        for tier in fleet.tiers:
            model = job.model or fleet.model_for(tier, route.kind.value)
            allowed = policy.config.tier_allowed(tier, job.privacy.value)
            costs.add_row(
                tier,
                fleet.place[tier],
                model or "-",
                f"{fleet.window(tier, model):,}" if fleet.place[tier] != "rules" else "-",
                f"{fleet.cost(tier, model, route.tokens_in, out):.5f}",
                "ok" if allowed else "[red]forbidden[/]",
            )
        console.print(costs)


def register(app: typer.Typer) -> None:
    @app.command("route")
    def route_cmd(
        prompt: Annotated[str | None, typer.Argument(help="the prompt; '-' reads stdin")] = None,
        kind: Annotated[Kind, typer.Option(help="job kind (auto: the classifier decides)")] = Kind.AUTO,
        risk: Annotated[Risk, typer.Option()] = Risk.LOW,
        privacy: Annotated[Privacy, typer.Option()] = Privacy.INTERNAL,
        workflow: Annotated[str, typer.Option()] = "default",
        user_tier: Annotated[UserTier, typer.Option("--user-tier")] = UserTier.STANDARD,
        tier: Annotated[str | None, typer.Option(help="explicit tier override")] = None,
        model: Annotated[str | None, typer.Option(help="explicit model override")] = None,
        session: Annotated[str | None, typer.Option(help="session id")] = None,
        recent: Annotated[
            str | None, typer.Option(help="the session's recent kinds or tiers, oldest first: code,code")
        ] = None,
        latency_budget: Annotated[
            float | None, typer.Option("--latency-budget", help="seconds the job may wait in queue")
        ] = None,
        max_cost: Annotated[float | None, typer.Option("--max-cost", help="cost ceiling, US$")] = None,
        max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="answer length cap")] = None,
        state: Annotated[
            str | None,
            typer.Option(help="fleet snapshot as JSON or @file (queue_depth, live_workers, ...)"),
        ] = None,
        batch: Annotated[
            Path | None, typer.Option(help="JSONL of jobs, one per line; '-' for stdin")
        ] = None,
        out: Annotated[Path | None, typer.Option(help="batch output JSONL (default stdout)")] = None,
        explain: Annotated[bool, typer.Option(help="also show the signals and every tier")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the route as JSON")] = False,
        config: str | None = _common.config_option(),
    ) -> None:
        """Show where a prompt would go and why, or route a JSONL batch (no Redis needed)."""
        cfg = _common.get(config)
        fleet_state = _state(state, session, recent)
        policy = Policy(cfg)
        if batch is not None:
            if prompt is not None:
                _common.fail("give a PROMPT or --batch, not both")
            _run_batch(policy, batch, out, fleet_state, cfg)
            return
        if prompt is None:
            _common.fail("give a PROMPT (or '-' to read stdin), or --batch FILE")
            return
        text = sys.stdin.read() if prompt == "-" else prompt
        try:
            job = Job(
                prompt=text,
                kind=kind,
                risk=risk,
                privacy=privacy,
                workflow=workflow,
                user_tier=user_tier,
                tier=tier,
                model=model,
                session=session,
                latency_budget_s=latency_budget,
                max_cost_usd=max_cost,
                max_tokens=max_tokens,
                # A rules kind needs a payload; the prompt stands in for it here.
                input={"text": text} if kind in RULES_KINDS else None,
            )
        except ValidationError as exc:
            _common.fail(_validation_message(exc))
            return
        route = _common.run(lambda: policy.route(job, fleet_state))
        if as_json:
            typer.echo(json.dumps(route.model_dump(mode="json"), indent=2, ensure_ascii=False))
            return
        _show(route, explain, policy, job)

    @app.command("train")
    def train_cmd(
        labels: Annotated[
            Path | None,
            typer.Option(help="your labelled traffic, JSONL: prompt + kind and/or small_ok"),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(help="folder for the models (default: the artifacts in use)"),
        ] = None,
        data: Annotated[
            Path | None, typer.Option(help="dev data folder (default: ../shared/data/dev)")
        ] = None,
        with_dev: Annotated[bool, typer.Option("--with-dev", help="add the dev data to --labels")] = False,
        from_fleet: Annotated[bool, typer.Option(
            "--from-fleet", help="train a candidate policy from the fleet's own labels")] = False,
        since: Annotated[str, typer.Option(help="with --from-fleet: labels of this period")] = "30d",
        config: Annotated[str | None, typer.Option(
            help="with --from-fleet: the fleet config (else $TIERFLEET_CONFIG or ./fleet.toml)")] = None,
    ) -> None:
        """Retrain the kind classifier and p_small_ok (seeded: same data, same weights).

        Without --labels the dev data is used ($TIERFLEET_DATA_DIR or ../shared/data/dev).
        --labels FILE takes JSON lines of your own traffic, one prompt each:
        {"prompt": "...", "kind": "summary"} trains the classifier; {"prompt": "...",
        "small_ok": 1} (0/1 or a share), or "small_score" and "large_score", trains
        p_small_ok. With --with-dev, the p_small_ok labels fit a correction on top of the
        dev data's model (labels.npz: recalibration plus nearest labelled neighbours),
        so a few hundred labels of your traffic weigh as much as they should.
        Point TIERFLEET_POLICY_ARTIFACTS at --out to route with the result.
        --from-fleet trains a candidate policy version from the fleet's labels (feedback,
        escalations, shadow samples) and judges it on labels it did not train on; roll it
        out with `tierfleet policy promote VERSION`.
        """
        from ..extras import require
        from ..policy.training import train

        if from_fleet:
            from .learn import _train_from_fleet

            _train_from_fleet(since, full=False, config=config)
            return
        _common.run(lambda: require("train"))
        if labels is not None and not labels.exists():
            _common.fail(f"--labels: {labels} not found")
        t0 = time.perf_counter()
        summary = _common.run(lambda: train(out=out, data_dir=data, labels=labels, with_dev=with_dev))
        took = time.perf_counter() - t0
        t = Table(title=f"trained in {took:.1f} s -> {summary['out']}", title_justify="left")
        t.add_column("model")
        t.add_column("rows", justify="right")
        t.add_column("detail")
        for name in ("kind", "small_ok"):
            s = summary[name]
            if "kept" in s:
                t.add_row(name, "-", f"[yellow]{s['why']}[/]")
            elif name == "kind":
                t.add_row(name, f"{s['rows']:,}", ", ".join(f"{k} {v}" for k, v in s["per_kind"].items()))
            else:
                t.add_row(name, f"{s['rows']:,}", f"mean label {s['mean_label']}")
        _common.console.print(t)
        if "correction" in summary:
            c = summary["correction"]
            t2 = f"correction from {c['labels']:,} labels of your traffic -> labels.npz"
            _common.console.print(t2)
        for p in summary.get("problems", []):
            _common.err_console.print(f"[yellow]skipped[/] {p}")
        if out is not None:
            _common.console.print(f"use them with: export TIERFLEET_POLICY_ARTIFACTS={out}")


def _run_batch(
    policy: Policy, batch: Path, out: Path | None, state: FleetState, cfg: FleetConfig
) -> None:
    t0 = time.perf_counter()
    try:
        src = sys.stdin if str(batch) == "-" else batch.open(encoding="utf-8")
    except OSError as exc:
        _common.fail(f"--batch: {exc}")
        return
    try:
        dst = out.open("w", encoding="utf-8") if out else sys.stdout
        try:
            stats = _common.run(lambda: route_batch(policy, src, dst, state, cfg))
        finally:
            if out:
                dst.close()
    finally:
        if src is not sys.stdin:
            src.close()
    took = time.perf_counter() - t0
    msg = (
        f"routed {stats['routed']:,} of {stats['jobs']:,} jobs in {took:.2f} s"
        f" ({stats['errors']:,} with an error field)"
    )
    if stats["lines_with_unknown_fields"]:
        fields = ", ".join(f"{k} x{v}" for k, v in stats["unknown_fields"].items())
        msg += f"; ignored unknown fields on {stats['lines_with_unknown_fields']:,} lines ({fields})"
    _common.err_console.print(msg + (f" -> {out}" if out else ""), soft_wrap=True)
