"""Compare the ledger with a provider's own usage export, per model and UTC day.

The first format is OpenAI's usage export (the Usage API's completions buckets as
CSV): ``start_time`` (Unix seconds or an ISO date), ``model``, ``input_tokens``,
``output_tokens``, ``num_model_requests`` and, where the export has it, a cost
column (``cost_usd``, ``amount_value`` or ``cost``). Rows of one (day, model) add up.
The ledger side counts every record of a call that reached the provider (a host is
named), which is what the provider bills.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Usage", "ledger_usage", "read_openai_usage", "reconcile"]

_COST_COLUMNS = ("cost_usd", "amount_value", "cost")


@dataclass
class Usage:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None

    def add(self, requests: int, tin: int, tout: int, cost: float | None) -> None:
        self.requests += requests
        self.tokens_in += tin
        self.tokens_out += tout
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost


@dataclass
class Difference:
    day: str
    model: str
    ledger: Usage
    provider: Usage
    fields: list[str] = field(default_factory=list)


def _day(value: str) -> str:
    value = value.strip()
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d")
    except ValueError:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%d")


def _int(row: dict[str, str], *names: str) -> int:
    for n in names:
        if row.get(n) not in (None, ""):
            return int(float(row[n]))
    return 0


def read_openai_usage(path: str | Path) -> dict[tuple[str, str], Usage]:
    """(day, model) -> usage from an OpenAI usage CSV; a missing column is named in the error."""
    out: dict[tuple[str, str], Usage] = defaultdict(Usage)
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        time_col = next((c for c in ("start_time", "start_time_iso", "date", "timestamp") if c in cols), None)
        missing = [c for c in ("model", "input_tokens", "output_tokens") if c not in cols]
        if time_col is None or missing:
            raise ValueError(f"{path}: not an OpenAI usage CSV (missing {missing or ['start_time']})")
        cost_col = next((c for c in _COST_COLUMNS if c in cols), None)
        for row in reader:
            cost = float(row[cost_col]) if cost_col and row.get(cost_col) not in (None, "") else None
            out[(_day(row[time_col]), row["model"])].add(
                _int(row, "num_model_requests", "n_requests", "requests"),
                _int(row, "input_tokens"), _int(row, "output_tokens"), cost)
    return dict(out)


def ledger_usage(records: Iterable[dict[str, Any]], days: set[str] | None = None,
                 hosts: set[str] | None = None) -> dict[tuple[str, str], Usage]:
    """(day, model) -> what the ledger says was sent to a provider (calls that reached a host)."""
    out: dict[tuple[str, str], Usage] = defaultdict(Usage)
    for r in records:
        if not r.get("host") or not r.get("model") or (hosts is not None and r["host"] not in hosts):
            continue
        day = datetime.fromtimestamp(float(r["ts"]), UTC).strftime("%Y-%m-%d")
        if days is not None and day not in days:
            continue
        out[(day, r["model"])].add(1, int(r["tokens_in"]), int(r["tokens_out"]), float(r["cost_usd"]))
    return dict(out)


def reconcile(ledger: dict[tuple[str, str], Usage], provider: dict[tuple[str, str], Usage],
              *, cost_tolerance: float = 0.01) -> list[Difference]:
    """Every (day, model) where the two disagree, with the fields that differ."""
    diffs = []
    for key in sorted(set(ledger) | set(provider)):
        a, b = ledger.get(key, Usage()), provider.get(key, Usage())
        fields = [f for f in ("requests", "tokens_in", "tokens_out") if getattr(a, f) != getattr(b, f)]
        if b.cost_usd is not None and abs((a.cost_usd or 0.0) - b.cost_usd) > cost_tolerance:
            fields.append("cost_usd")
        if fields:
            diffs.append(Difference(key[0], key[1], a, b, fields))
    return diffs
