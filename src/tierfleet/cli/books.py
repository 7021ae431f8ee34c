"""``tierfleet budget set|show`` and ``tierfleet ledger ...``: the fleet's money books."""

from __future__ import annotations

from typing import Annotated

import redis
import typer
from rich.table import Table

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
    book = BudgetBook(redis.Redis.from_url(cfg.redis_url, decode_responses=True), cfg)
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
    book = BudgetBook(redis.Redis.from_url(cfg.redis_url, decode_responses=True), cfg)
    t = Table("budget", "scope", "period", "limit", "spent", "held", "used", "on_exhausted", "alert")
    for s in book.status():
        t.add_row(s.name, s.scope, s.period, f"${s.limit_usd:,.2f}", f"${s.spent_usd:,.4f}",
                  f"${s.held_usd:,.4f}", f"{s.used:.0%}", s.on_exhausted,
                  "-" if s.crossed is None else f">= {s.crossed:.0%}")
    _common.console.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(budget_app, name="budget")
