"""The prompt inventory: "how much will routing save?" answered before anything runs.

Each CSV row (workflow, kind, monthly_volume, avg_input_tokens,
avg_output_tokens, risk, privacy, example_prompt; optional tier and model to
pin a row, as a job may) becomes a :class:`~tierfleet.jobs.Job` that the real
routing policy routes. Its monthly cost is then:

- before: every job on the baseline model (``ledger.baseline_model``, default
  the priciest paid model), billed by token;
- after: on the routed tier and model, priced as the ledger prices a real
  attempt: paid by token; rented and local by the seconds a job would take
  there, estimated from the average tokens and an assumed throughput (prefill
  and decode tokens per second, reported with the result); rules cost nothing.

``prices`` (TOML, ``[models."name"] input = .. output = ..`` in USD per million
tokens) overrides or adds model prices for the projection.
"""

from __future__ import annotations

import csv
import inspect
import math
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import FleetConfig, ModelConfig
from ..errors import TierfleetError
from ..jobs import RULES_KINDS, Job, Kind, Privacy, Risk, Route
from ..policy import build_policy
from ..pricing import attempt_cost, baseline_cost
from .charts import plot_bars

__all__ = [
    "Inventory",
    "InventoryError",
    "InventoryRow",
    "ProjectedRow",
    "Savings",
    "Throughput",
    "WorkflowTotal",
    "apply_prices",
    "plot_inventory",
    "project",
    "read_rows",
]

MAX_FILE_BYTES = 10_000_000
REQUIRED_COLUMNS = (
    "workflow",
    "kind",
    "monthly_volume",
    "avg_input_tokens",
    "avg_output_tokens",
    "risk",
    "privacy",
    "example_prompt",
)
OPTIONAL_COLUMNS = ("tier", "model")


# The Job model's own bound on max_tokens.
_MAX_TOKENS: int = next(m.le for m in Job.model_fields["max_tokens"].metadata if hasattr(m, "le"))


class InventoryError(TierfleetError):
    """The inventory or prices file is unreadable or names something the fleet does not know."""


class InventoryRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=128)
    kind: Kind
    monthly_volume: int = Field(ge=0)
    avg_input_tokens: int = Field(ge=0)
    avg_output_tokens: int = Field(ge=0)
    risk: Risk = Risk.LOW
    privacy: Privacy = Privacy.INTERNAL
    example_prompt: str = ""
    tier: str | None = None
    model: str | None = None


class Throughput(BaseModel):
    """Assumed speed of a self-hosted or rented model, to turn tokens into billable seconds."""

    prefill_tps: float = Field(default=1500.0, gt=0, description="input tokens read per second")
    decode_tps: float = Field(default=50.0, gt=0, description="output tokens written per second")

    def seconds(self, tokens_in: int, tokens_out: int) -> float:
        return tokens_in / self.prefill_tps + tokens_out / self.decode_tps


class ProjectedRow(BaseModel):
    workflow: str
    kind: str
    monthly_volume: int
    avg_input_tokens: int
    avg_output_tokens: int
    risk: str
    privacy: str
    tier: str
    model: str | None
    host: str | None
    place: str
    est_seconds_per_job: float
    cost_per_job_before_usd: float
    cost_per_job_after_usd: float
    cost_before_usd: float
    cost_after_usd: float
    savings_usd: float
    review: bool
    reasons: list[str]
    warnings: list[str]

    @property
    def why(self) -> str:
        """The reason that settled the row's tier: the last routing reason recorded."""
        return self.reasons[-1] if self.reasons else ""


class WorkflowTotal(BaseModel):
    workflow: str
    monthly_volume: int
    cost_before_usd: float
    cost_after_usd: float
    savings_usd: float


class Savings(BaseModel):
    usd: float
    fraction: float | None


class Inventory(BaseModel):
    source: str
    config_file: str = Field(default="built-in defaults", description="the fleet config used")
    baseline_model: str | None
    warnings: list[str] = Field(default_factory=list)
    prices: str | None
    assumptions: Throughput
    rows: list[ProjectedRow]
    workflows: list[WorkflowTotal]
    total_before_usd: float
    total_after_usd: float
    savings: Savings


# -- reading ----------------------------------------------------------------------


def read_rows(csv_path: str | Path, *, max_rows: int = 100_000) -> list[tuple[int, InventoryRow]]:
    """Parse and validate the CSV; each row comes with its line number for error messages."""
    path = Path(csv_path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from exc
    if size > MAX_FILE_BYTES:
        raise InventoryError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} allowed")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if missing or unknown:
            raise InventoryError(
                f"{path}: columns must be {', '.join(REQUIRED_COLUMNS)} (optional: "
                f"{', '.join(OPTIONAL_COLUMNS)}); missing {missing or 'none'}, "
                f"unknown {unknown or 'none'}"
            )
        rows: list[tuple[int, InventoryRow]] = []
        for raw in reader:
            if len(rows) >= max_rows:
                raise InventoryError(f"{path}: more than {max_rows} rows")
            line = reader.line_num
            values = {
                k.strip(): v.strip()
                for k, v in raw.items()
                if k is not None and v is not None and v.strip() != ""
            }
            if not values:
                continue
            try:
                rows.append((line, InventoryRow(**values)))
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                raise InventoryError(f"{path}, line {line}: {field}: {first['msg']}") from exc
    return rows


def apply_prices(
    config: FleetConfig, prices: str | Path | None = None, *, baseline_model: str | None = None
) -> FleetConfig:
    """A copy of ``config`` with the prices file's models merged in (and a new baseline)."""
    models = dict(config.models)
    if prices is not None:
        path = Path(prices)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InventoryError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InventoryError(f"{path}: not valid TOML: {exc}") from exc
        table = data.get("models")
        if not isinstance(table, dict) or set(data) - {"models"}:
            raise InventoryError(f'{path}: expected only [models."name"] tables with input and output')
        for name, entry in table.items():
            if (
                not isinstance(entry, dict)
                or set(entry) != {"input", "output"}
                or not all(isinstance(entry[k], int | float) and entry[k] >= 0 for k in entry)
            ):
                raise InventoryError(
                    f"{path}: models.{name}: expected input = <USD per 1M> and "
                    "output = <USD per 1M>, both >= 0"
                )
            base = models.get(name, ModelConfig())
            models[name] = base.model_copy(
                update={
                    "input_per_mtok": float(entry["input"]),
                    "output_per_mtok": float(entry["output"]),
                }
            )
    update: dict[str, Any] = {"models": models}
    if baseline_model is not None:
        mc = models.get(baseline_model)
        if mc is None or mc.input_per_mtok is None or mc.output_per_mtok is None:
            raise InventoryError(f"baseline {baseline_model!r}: no price for it in the config or prices file")
        update["ledger"] = config.ledger.model_copy(update={"baseline_model": baseline_model})
    return config.model_copy(update=update)


# -- projecting -------------------------------------------------------------------


def _job(line: int, row: InventoryRow) -> Job:
    prompt = row.example_prompt or f"{row.workflow}: {row.kind.value}"
    if row.kind is Kind.AUTO and not row.example_prompt:
        raise InventoryError(f"line {line}: an auto row needs an example_prompt for the classifier")
    return Job(
        id=f"inventory-{line}",
        kind=row.kind,
        prompt=None if row.kind in RULES_KINDS else prompt,
        # Rules jobs carry a payload; its content does not change where they go.
        input={"text": prompt} if row.kind in RULES_KINDS else None,
        risk=row.risk,
        privacy=row.privacy,
        workflow=row.workflow,
        tier=row.tier,
        model=row.model,
        # The answer's length is known: the policy's size and cost stages use it.
        max_tokens=min(row.avg_output_tokens, _MAX_TOKENS) if row.avg_output_tokens else None,
    )


def _route(policy: Any, job: Job, tokens_in: int) -> tuple[Route, bool]:
    """Route the job, giving the policy the row's average size if its API takes one."""
    try:
        params = inspect.signature(policy.route).parameters
    except (TypeError, ValueError):
        params = {}
    if "tokens_in" in params:
        return policy.route(job, tokens_in=tokens_in), True
    return policy.route(job), False


def project(
    csv_path: str | Path,
    config: FleetConfig,
    *,
    prices: str | Path | None = None,
    throughput: Throughput | None = None,
    baseline_model: str | None = None,
) -> Inventory:
    """Monthly cost per row and workflow, before (all on the baseline) and after routing."""
    throughput = throughput or Throughput()
    config = apply_prices(config, prices, baseline_model=baseline_model)
    rows = read_rows(csv_path, max_rows=config.limits.max_batch)
    policy = build_policy(config)
    out: list[ProjectedRow] = []
    for line, row in rows:
        try:
            job = _job(line, row)
            route, sized = _route(policy, job, row.avg_input_tokens)
        except (TierfleetError, ValidationError, ValueError) as exc:
            raise InventoryError(f"{csv_path}, line {line}: cannot route: {exc}") from exc
        out.append(_project_row(config, row, route, sized, throughput))
    return _summarise(str(csv_path), config, prices, throughput, out)


def _host_serving(config: FleetConfig, tier: str, model: str | None) -> str | None:
    names = [n for n, h in config.hosts_for(tier).items() if not model or model in h.models]
    return names[0] if names else None


def _placement(
    config: FleetConfig, row: InventoryRow, route: Route
) -> tuple[str, str | None, str | None, list[str], list[str]]:
    """Tier, model, host for the row's average job, plus extra reasons and warnings.

    The policy sees the example prompt, not the row's average input, so an
    average job may not fit the host it chose. At run time such a job fails
    there (ContextTooLong) and moves on to a larger window: down the route's
    fallback chain, then the policy's spill order, within privacy. The projection
    does the same, so it never prices a 75K-token job on a 32K-token model.
    """
    need = row.avg_input_tokens + row.avg_output_tokens
    chain = list(dict.fromkeys([route.tier, *route.fallbacks, *config.policy.spill_order]))
    chain = [
        t
        for t in chain
        if t in config.tiers
        and (t == route.tier or row.privacy is not Privacy.CONFIDENTIAL or t in config.local_tiers())
    ]
    reasons: list[str] = []
    first: tuple[str, str | None, str | None] | None = None
    for i, tier in enumerate(chain):
        tc = config.tiers[tier]
        if tc.place == "rules":
            return tier, None, None, reasons, []
        model = (route.model if i == 0 else None) or tc.model_for(route.kind.value)
        host = (route.host if i == 0 else None) or _host_serving(config, tier, model)
        if first is None:
            first = (tier, model, host)
        if host is None:
            continue
        window = config.context_window(host, model)
        if need <= window:
            return tier, model, host, reasons, []
        reasons.append(
            f"inventory: an average job ({need} tokens) exceeds the {window}-token window of "
            f"{host} ({tier}); at run time it falls back"
        )
    tier, model, host = first or (route.tier, route.model, route.host)
    return (
        tier,
        model,
        host,
        [],
        [
            f"an average job ({need} tokens) fits no host on its route "
            f"({' -> '.join(chain) or route.tier}): priced on {tier}, but it would fail there"
        ],
    )


def _project_row(
    config: FleetConfig, row: InventoryRow, route: Route, sized: bool, throughput: Throughput
) -> ProjectedRow:
    tin, tout = row.avg_input_tokens, row.avg_output_tokens
    tier, model, host, extra_reasons, warnings = _placement(config, row, route)
    place = config.tiers[tier].place
    seconds = 0.0 if place in ("rules", "paid") else throughput.seconds(tin, tout)
    after = attempt_cost(
        config, tier=tier, host=host, model=model, tokens_in=tin, tokens_out=tout, seconds=seconds
    )
    before = baseline_cost(config, tin, tout)
    if not sized and tin >= config.policy.large_job_tokens and place != "rules":
        warnings.append(
            f"the policy saw only the example prompt, not the {tin} average input tokens: "
            "its size rule may route this row elsewhere in production"
        )
    return ProjectedRow(
        workflow=row.workflow,
        kind=row.kind.value,
        monthly_volume=row.monthly_volume,
        avg_input_tokens=tin,
        avg_output_tokens=tout,
        risk=row.risk.value,
        privacy=row.privacy.value,
        tier=tier,
        model=model,
        host=host,
        place=place,
        est_seconds_per_job=seconds,
        cost_per_job_before_usd=before,
        cost_per_job_after_usd=after,
        cost_before_usd=before * row.monthly_volume,
        cost_after_usd=after * row.monthly_volume,
        savings_usd=(before - after) * row.monthly_volume,
        review=route.review,
        reasons=[*route.explain(), *extra_reasons],
        warnings=warnings,
    )


def _summarise(
    source: str,
    config: FleetConfig,
    prices: str | Path | None,
    throughput: Throughput,
    rows: Iterable[ProjectedRow],
) -> Inventory:
    rows = list(rows)
    per_wf: dict[str, list[ProjectedRow]] = defaultdict(list)
    for r in rows:
        per_wf[r.workflow].append(r)
    workflows = [
        WorkflowTotal(
            workflow=wf,
            monthly_volume=sum(r.monthly_volume for r in rs),
            cost_before_usd=math.fsum(r.cost_before_usd for r in rs),
            cost_after_usd=math.fsum(r.cost_after_usd for r in rs),
            savings_usd=math.fsum(r.savings_usd for r in rs),
        )
        for wf, rs in per_wf.items()
    ]
    workflows.sort(key=lambda w: -w.cost_before_usd)
    before = math.fsum(r.cost_before_usd for r in rows)
    after = math.fsum(r.cost_after_usd for r in rows)
    return Inventory(
        source=source,
        config_file=(config.source if config.source != "<built-in>" else
                     "built-in defaults (no --config, $TIERFLEET_CONFIG or ./fleet.toml)"),
        baseline_model=config.baseline_model(),
        warnings=[f"local compute priced at $0 on tier {t}: set cost_per_hour (or "
                  f"cost_per_second) on its hosts" for t in config.unpriced_compute()],
        prices=str(prices) if prices is not None else None,
        assumptions=throughput,
        rows=rows,
        workflows=workflows,
        total_before_usd=before,
        total_after_usd=after,
        savings=Savings(usd=before - after, fraction=(before - after) / before if before else None),
    )


def plot_inventory(inv: Inventory, path: str | Path) -> Path:
    """Monthly cost per workflow, before vs after routing, as a PNG."""
    wfs = inv.workflows
    fraction = f"{inv.savings.fraction:.0%}" if inv.savings.fraction is not None else "n/a"
    return plot_bars(
        path,
        [w.workflow for w in wfs],
        [
            (
                f"before: all on {inv.baseline_model or 'n/a'}",
                [w.cost_before_usd for w in wfs],
                "#c8553d",
            ),
            ("after: routed", [w.cost_after_usd for w in wfs], "#2a7ab0"),
        ],
        title="Projected monthly cost per workflow, before vs after routing",
        xlabel="USD per month",
        subtitle=(
            f"total {inv.total_before_usd:,.2f} -> {inv.total_after_usd:,.2f} USD a month "
            f"(saves {fraction}); self-hosted time at {inv.assumptions.prefill_tps:g} in / "
            f"{inv.assumptions.decode_tps:g} out tokens per second"
        ),
    )
