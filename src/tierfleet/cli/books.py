"""``tierfleet budget set|show`` and ``tierfleet ledger ...``: the fleet's money books."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..broker import redis_client
from ..budgets import BudgetBook
from . import _common

__all__ = ["register"]

budget_app = typer.Typer(help="Spending limits per workflow, tag, user tier or the whole fleet.",
                         no_args_is_help=True)


@budget_app.command("set")
def budget_set(
    name: Annotated[str, typer.Argument(help="the budget's name (a [budgets.NAME] or a new one)")],
    limit_usd: Annotated[float | None, typer.Option("--limit-usd", help="USD per period")] = None,
    scope: Annotated[str | None, typer.Option(help="fleet, workflow:NAME, tag:NAME, user_tier:NAME")] = None,
    period: Annotated[str | None, typer.Option(help="day or month")] = None,
    on_exhausted: Annotated[
        str | None, typer.Option("--on-exhausted", help="cheaper, park or reject")] = None,
    alerts: Annotated[str | None, typer.Option(help="alert thresholds, e.g. 0.8,1.0")] = None,
    config: str | None = _common.config_option(),
) -> None:
    """Create or change a budget for every worker at once (kept in Redis, over the config's)."""
    cfg = _common.get(config)
    book = BudgetBook(redis_client(cfg), cfg)
    if name not in book.effective() and limit_usd is None:
        _common.fail(f"budget {name} is new: give --limit-usd")
    try:
        b = book.set(name, limit_usd=limit_usd, scope=scope, period=period, on_exhausted=on_exhausted,
                     alerts=[float(a) for a in alerts.split(",")] if alerts else None)
    except ValueError as exc:
        _common.fail(f"budget {name}: {exc}")
        raise
    typer.echo(f"budget {name}: {b.scope}, ${b.limit_usd:g} per {b.period}, on_exhausted = {b.on_exhausted}")


@budget_app.command("show")
def budget_show(config: str | None = _common.config_option()) -> None:
    """Every budget's spend, holds and room in its current period."""
    cfg = _common.get(config)
    book = BudgetBook(redis_client(cfg), cfg)
    t = Table("budget", "scope", "period", "limit", "spent", "held", "used", "on_exhausted", "alert")
    for s in book.status():
        t.add_row(s.name, s.scope, s.period, f"${s.limit_usd:,.2f}", f"${s.spent_usd:,.4f}",
                  f"${s.held_usd:,.4f}", f"{s.used:.0%}", s.on_exhausted,
                  "-" if s.crossed is None else f">= {s.crossed:.0%}")
    _common.console.print(t)




ledger_app = typer.Typer(help="The ledger's database: export and reconcile.", no_args_is_help=True)


def _sql(cfg: object) -> object:
    from ..ledger_sql import SqlLedger

    url = getattr(getattr(cfg, "ledger"), "url")  # noqa: B009
    if not url:
        _common.fail("ledger.url is not set: the ledger has no database to read")
    return SqlLedger(url)


@ledger_app.command("export")
def ledger_export(
    out: Annotated[str, typer.Option(help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    config: str | None = _common.config_option(),
) -> None:
    """Every record in the ledger's database, as CSV or Parquet (the pyarrow extra)."""
    import csv

    cfg = _common.get(config)
    sql = _sql(cfg)
    cols = ["job_id", "attempt", "call", "ts", "workflow", "kind", "tier", "host", "model", "outcome",
            "tokens_in", "tokens_out", "tokens_estimated", "cost_usd", "baseline_cost_usd", "latency_s",
            "fallbacks", "job_final", "cache_hit", "simulated", "privacy", "error"]
    recs = ({c: r.get(c) for c in cols} for r in sql.iter_records())  # type: ignore[attr-defined]
    if fmt == "csv":
        n = 0
        with open(out, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in recs:
                w.writerow(r)
                n += 1
    elif fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            _common.fail("parquet needs pyarrow: pip install 'tierfleet[parquet]'")
            raise
        rows = list(recs)
        pq.write_table(pa.Table.from_pylist(rows), out)
        n = len(rows)
    else:
        _common.fail(f"--format must be csv or parquet, not {fmt!r}")
        return
    typer.echo(f"{n} records written to {out}")


@ledger_app.command("reconcile")
def ledger_reconcile(
    usage_csv: Annotated[str, typer.Argument(help="the provider's usage export (OpenAI usage CSV)",
                                             metavar="FILE")],
    host: Annotated[list[str] | None, typer.Option(help="ledger hosts billed by this provider")] = None,
    config: str | None = _common.config_option(),
) -> None:
    """Differences per model and day between the ledger and the provider's own usage."""
    from ..reports.reconcile import ledger_usage, read_openai_usage, reconcile

    cfg = _common.get(config)
    try:
        provider = read_openai_usage(usage_csv)
    except (OSError, ValueError) as exc:
        _common.fail(str(exc))
        raise
    days = {d for d, _ in provider}
    hosts = set(host) if host else {n for n, h in cfg.hosts.items()
                                    if h.kind == "openai" and cfg.tiers[h.tier].place == "paid"}
    if cfg.ledger.url:
        records = _sql(cfg).iter_records()  # type: ignore[attr-defined]
    else:
        from ..ledger import Ledger

        records = Ledger(redis_client(cfg), cfg).raw_between(0, 4e9)
    diffs = reconcile(ledger_usage(records, days, hosts), provider)
    if not diffs:
        typer.echo(f"no differences over {len(provider)} (day, model) rows")
        return
    t = Table("day", "model", "differs", "requests", "input tokens", "output tokens", "cost")
    for d in diffs:
        t.add_row(d.day, d.model, ",".join(d.fields),
                  f"{d.ledger.requests} vs {d.provider.requests}",
                  f"{d.ledger.tokens_in:,} vs {d.provider.tokens_in:,} "
                  f"({d.ledger.tokens_in - d.provider.tokens_in:+,})",
                  f"{d.ledger.tokens_out:,} vs {d.provider.tokens_out:,} "
                  f"({d.ledger.tokens_out - d.provider.tokens_out:+,})",
                  "-" if d.provider.cost_usd is None
                  else f"${d.ledger.cost_usd or 0:.4f} vs ${d.provider.cost_usd:.4f}")
    _common.console.print(t)
    raise typer.Exit(1)


def ledger_writer(
    once: Annotated[bool, typer.Option(help="drain what is there now and exit")] = False,
    config: str | None = _common.config_option(),
) -> None:
    """Move the ledger's record stream from Redis into the database at ledger.url."""
    import threading

    from ..ledger_sql import SqlLedgerWriter

    cfg = _common.get(config)
    if not cfg.ledger.url:
        _common.fail("ledger.url is not set: no database to write the ledger to")
    writer = SqlLedgerWriter(redis_client(cfg, decode_responses=False), cfg)
    if once:
        typer.echo(f"{writer.drain()} records written")
        return
    writer.run_forever(threading.Event())


def register_ledger(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")
    app.command("ledger-writer")(ledger_writer)


def register(app: typer.Typer) -> None:
    app.add_typer(budget_app, name="budget")
    register_ledger(app)
