"""``tierfleet report`` and ``tierfleet inventory``: where the money goes, and where it would go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import redis
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..broker import redis_client
from ..budgets import BudgetBook
from ..errors import TierfleetError
from ..reports.inventory import Inventory, Throughput, plot_inventory, project
from ..reports.spend import GroupBy, Report, check, plot_report, previous_report, route_check
from ..reports.spend import report as build
from . import _common

__all__ = ["register"]

_out = _common.console
_err = _common.err_console


_redact_url = _common.redact_url


def _show(table: Table) -> None:
    # Rich assumes 80 columns when output is piped; a file or pager can take a wide table.
    (_out if _out.is_terminal else Console(width=132)).print(table)


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 or x == 0 else f"${x:.6f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"


def _print_report(rep: Report) -> None:
    saved = f"{_money(rep.savings_usd)} ({_pct(rep.savings_fraction)})"
    _out.print(
        f"[bold]Last {rep.since}[/bold]: {rep.jobs} jobs, {rep.attempts} attempts, "
        f"{rep.tokens_in:,} tokens in / {rep.tokens_out:,} out; spent {_money(rep.spend_usd)} "
        f"vs {_money(rep.baseline_usd)} on baseline {rep.baseline_model or '-'}: saved {saved}",
        highlight=False,
    )
    _out.print(
        f"Monthly projection: {_money(rep.monthly_spend_usd)} (baseline "
        f"{_money(rep.monthly_baseline_usd)}), from {rep.observed_days:.1f} observed day(s). "
        f"Latency p50/p95/p99 {_secs(rep.latency_p50_s)} / {_secs(rep.latency_p95_s)} / "
        f"{_secs(rep.latency_p99_s)}; fallback {_pct(rep.fallback_rate)}, escalation "
        f"{_pct(rep.escalation_rate)}, cache hits {_pct(rep.cache_hit_rate)}",
        highlight=False,
    )
    if rep.baseline_basis:
        _out.print(f"Savings compare with: {rep.baseline_basis}", highlight=False, markup=False)
    for w in rep.warnings:
        _out.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if rep.tier_share:
        shares = ", ".join(f"{t} {s:.0%}" for t, s in rep.tier_share.items())
        _out.print(f"Jobs per tier: {shares}", highlight=False)
    if rep.simulated_attempts:
        _out.print(f"[yellow]Includes {rep.simulated_attempts} attempts on simulated hosts.[/yellow]")
    money = Table(title=f"Spend by {rep.by}", box=box.SIMPLE_HEAD)
    for col in (
        rep.by,
        "jobs",
        "tokens in",
        "tokens out",
        "spend",
        "baseline",
        "saved",
        "of spend",
    ):
        money.add_column(col, justify="left" if col == rep.by else "right")
    for r in rep.rows:
        money.add_row(
            r.key,
            f"{r.jobs:,}",
            f"{r.tokens_in:,}",
            f"{r.tokens_out:,}",
            _money(r.spend_usd),
            _money(r.baseline_usd),
            _pct(r.savings_fraction),
            _pct(r.spend_share),
        )
    _show(money)
    ops = Table(title=f"Latency and outcomes by {rep.by}", box=box.SIMPLE_HEAD)
    for col in (rep.by, "p50", "p95", "p99", "fallback", "escalated", "cache hits"):
        ops.add_column(col, justify="left" if col == rep.by else "right")
    for r in rep.rows:
        ops.add_row(
            r.key,
            _secs(r.latency_p50_s),
            _secs(r.latency_p95_s),
            _secs(r.latency_p99_s),
            _pct(r.fallback_rate),
            _pct(r.escalation_rate),
            _pct(r.cache_hit_rate),
        )
    _show(ops)


def _print_inventory(inv: Inventory) -> None:
    table = Table(
        title=f"Monthly cost: before (all on {inv.baseline_model}) and after routing",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("workflow", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("jobs/mo", justify="right", no_wrap=True)
    table.add_column("tier", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("before", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    table.add_column("why here", overflow="fold")
    for r in inv.rows:
        table.add_row(
            r.workflow,
            r.kind,
            f"{r.monthly_volume:,}",
            r.tier,
            r.model or "-",
            _money(r.cost_before_usd),
            _money(r.cost_after_usd),
            escape(r.why),
        )
    table.add_section()
    table.add_row("total", "", "", "", "", _money(inv.total_before_usd), _money(inv.total_after_usd), "")
    _out.print(f"Config: {inv.config_file}", highlight=False, markup=False)
    _show(table)
    for w in inv.warnings:
        _out.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False)
    _out.print(f"Saves {_money(inv.savings.usd)} a month ({_pct(inv.savings.fraction)}).", highlight=False)
    for r in inv.rows:
        for w in r.warnings:
            _out.print(f"[yellow]warning[/yellow] {r.workflow}/{r.kind}: {w}", highlight=False)


def register(app: typer.Typer) -> None:
    from . import books

    books.register(app)

    @app.command("report")
    def report_cmd(
        since: Annotated[str, typer.Option(help="period: 30d, 12h, 2w")] = "30d",
        by: Annotated[GroupBy, typer.Option(help="group rows by workflow, tier, model or kind")] = "workflow",
        as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
        plot: Annotated[
            Path | None, typer.Option(help="write a PNG chart of spend, routed vs baseline")
        ] = None,
        check_: Annotated[
            bool, typer.Option("--check", help="exit 1 with the reasons when an alert fires "
                               "(spend, budgets, and per route: cost per request, quality)")
        ] = False,
        source: Annotated[
            str | None, typer.Option(help="redis or sql (default: sql when ledger.url is set)")
        ] = None,
        config: str | None = _common.config_option(),
    ) -> None:
        """Spend, tokens, latency and savings against the baseline model, from the ledger."""
        _common.since_seconds(since)  # a bad period: one line naming --since, before any Redis
        cfg = _common.get(config)
        source = source or ("sql" if cfg.ledger.url else "redis")
        if source not in ("redis", "sql") or (source == "sql" and not cfg.ledger.url):
            _common.fail("--source sql needs ledger.url in the config" if source == "sql"
                         else f"--source must be redis or sql, not {source!r}")
        url = cfg.ledger.url if source == "sql" else ""  # "": Redis
        # The fleet's client: Sentinel URLs, the CLI's timeouts, no Redis nobody chose.
        client = _common.run(lambda: redis_client(cfg, decode_responses=False))
        try:
            rep = build(since, by, config=cfg, redis=client, sql_url=url)
            previous = previous_report(rep, config=cfg, redis=client, sql_url=url) if check_ else None
            budget_alerts = BudgetBook(client, cfg).alerts() if check_ else []
            routes = route_check(rep, config=cfg, redis=client, sql_url=url) if check_ else None
        except redis.RedisError as exc:
            _common.fail(f"cannot read the ledger from Redis at {_redact_url(cfg.redis_url)}: {exc}")
            raise  # unreachable: fail exits
        except ValueError as exc:
            _common.fail(str(exc))
            raise
        finally:
            client.close()
        if as_json:
            typer.echo(rep.model_dump_json(indent=2))
        else:
            _print_report(rep)
        if plot is not None:
            _common.run(lambda: plot_report(rep, plot))  # matplotlib: the charts extra
            _err.print(f"chart written to {plot}", highlight=False)
        if check_:
            alerts = check(rep, previous)
            for a in alerts:
                _err.print(f"[red]ALERT[/red] {a.name}: {a.reason}", highlight=False)
            for name, _threshold, text in budget_alerts:
                _err.print(f"[red]ALERT[/red] budget:{name}: {text}", highlight=False)
            route_alerts = routes.alerts if routes is not None else []
            for ra in route_alerts:
                # Model names and figures only: no prompt or answer reaches a route alert.
                _err.print(f"[red]ALERT[/red] route:{ra.name}: {escape(ra.reason)}", highlight=False)
            if alerts or budget_alerts or route_alerts:
                raise typer.Exit(1)
            _err.print("no alerts", highlight=False)

    @app.command("inventory")
    def inventory_cmd(
        csv_file: Annotated[Path, typer.Argument(help="inventory CSV", metavar="FILE.csv")],
        prices: Annotated[Path | None, typer.Option(help="TOML of model prices to add or override")] = None,
        baseline: Annotated[
            str | None, typer.Option(help="model for the 'before' column (default: the config's)")
        ] = None,
        prefill_tps: Annotated[
            float, typer.Option(help="assumed input tokens/s on own or rented GPUs")
        ] = Throughput().prefill_tps,
        decode_tps: Annotated[
            float, typer.Option(help="assumed output tokens/s on own or rented GPUs")
        ] = Throughput().decode_tps,
        plot: Annotated[
            Path | None, typer.Option(help="write a PNG chart per workflow, before vs after")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the projection as JSON")] = False,
        config: str | None = _common.config_option(),
    ) -> None:
        """Project monthly cost before and after routing, from a prompt inventory."""
        cfg = _common.get(config)
        try:
            inv = project(
                csv_file,
                cfg,
                prices=prices,
                baseline_model=baseline,
                throughput=Throughput(prefill_tps=prefill_tps, decode_tps=decode_tps),
            )
        except (TierfleetError, ValueError) as exc:
            _common.fail(str(exc))
            raise
        if as_json:
            typer.echo(inv.model_dump_json(indent=2))
        else:
            _print_inventory(inv)
        if plot is not None:
            _common.run(lambda: plot_inventory(inv, plot))
            _err.print(f"chart written to {plot}", highlight=False)
