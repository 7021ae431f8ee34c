"""``tierfleet feedback``, ``tierfleet train-fleet`` and ``tierfleet policy list|promote|rollback``.

The router's learning loop from the command line: a producer's verdict on an answer
becomes a label; a candidate policy is trained from the fleet's labels and judged on
labelled traffic it did not train on; a candidate is rolled out in stages (sticky per
job id) or rolled back. The work is in :mod:`tierfleet.labels`,
:mod:`tierfleet.policy.fleet_training` and :mod:`tierfleet.policy.versions`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from . import _common

policy_app = typer.Typer(help="Policy versions: list them, promote a candidate in stages, roll back.",
                         no_args_is_help=True)


def _client(config: str | None) -> tuple[Any, Any]:
    from ..broker import redis_client

    cfg = _common.get(config)
    return cfg, redis_client(cfg)


@policy_app.command("list")
def policy_list(as_json: bool = typer.Option(False, "--json"),
                config: str | None = _common.config_option()) -> None:
    """Every policy version with its status, share and evaluation; which one routes now."""
    from ..policy.versions import PolicyVersions, Rollout

    cfg, r = _client(config)
    with _common.clear_errors():
        versions = PolicyVersions(cfg)
        state = Rollout(r, cfg, versions).state()
        rows = versions.list()
    if as_json:
        print(json.dumps({"rollout": state, "versions": rows}, indent=2, default=str))
        return
    _common.console.print(f"current: {state['current']}  candidate: {state['candidate'] or '-'} "
                          f"(share {state['share']:.0%})  {state['reason']}", markup=False)
    t = Table(title="policy versions")
    for col in ("version", "status", "parent", "evaluation"):
        t.add_column(col)
    for v in rows:
        ev = v.get("evaluation") or {}
        t.add_row(str(v.get("version")), str(v.get("status", "")), str(v.get("parent") or "-"),
                  str(ev.get("gate", "-")))
    _common.console.print(t)


@policy_app.command("promote")
def policy_promote(
    version: Annotated[str | None, typer.Argument(help="start rolling out this candidate")] = None,
    force: bool = typer.Option(False, help="start a candidate whose evaluation was refused"),
    config: str | None = _common.config_option(),
) -> None:
    """Start a candidate's rollout (its first share), or move the rolling one a stage on;
    after the last stage it becomes the current policy."""
    from ..policy.versions import Rollout

    cfg, r = _client(config)
    with _common.clear_errors():
        rollout = Rollout(r, cfg)
        try:
            state = (rollout.start(version, "promoted from the command line", force=force)
                     if version else rollout.advance("promoted from the command line"))
        except ValueError as exc:
            _common.fail(str(exc))
    _common.console.print(f"current: {state['current']}  candidate: {state['candidate'] or '-'} "
                          f"(share {state['share']:.0%})", markup=False)


@policy_app.command("rollback")
def policy_rollback(reason: str = typer.Option("rolled back from the command line"),
                    config: str | None = _common.config_option()) -> None:
    """Drop the rolling candidate, or go back to the previous current version."""
    from ..policy.versions import Rollout

    cfg, r = _client(config)
    with _common.clear_errors():
        try:
            state = Rollout(r, cfg).rollback(reason)
        except ValueError as exc:
            _common.fail(str(exc))
    _common.console.print(f"current: {state['current']}  candidate: {state['candidate'] or '-'}",
                          markup=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def feedback(
        job_id: Annotated[str, typer.Argument(help="the job whose answer you judge")],
        good: Annotated[bool | None, typer.Option("--good/--bad", help="was the answer good?")] = None,
        score: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="a score in 0..1")] = None,
        note: Annotated[str | None, typer.Option(help="a short note kept with the label")] = None,
        config: str | None = _common.config_option(),
    ) -> None:
        """Say whether a job's answer was good: a label for the router, tied to the call that answered."""
        from ..labels import NoAnswer, record_feedback

        if good is None and score is None:
            _common.fail("give --good or --bad (or --score S)")
        cfg, r = _client(config)
        with _common.clear_errors():
            try:
                label = record_feedback(r, cfg, job_id, good=good, score=score, note=note)
            except NoAnswer as exc:
                _common.fail(str(exc))
        print(json.dumps(label.shown(), indent=2, default=str))

    @app.command("train-fleet")
    def train_fleet(
        since: Annotated[str, typer.Option(help="labels of this period: 30d, 12h, 2w")] = "30d",
        full: bool = typer.Option(False, help="retrain on the dev data plus the labels (needs "
                                              "../shared/data/dev), not only a correction"),
        config: str | None = _common.config_option(),
    ) -> None:
        """Train a candidate policy from the fleet's labels and judge it on held-out labels
        (``tierfleet train --from-fleet`` does the same)."""
        _train_from_fleet(since, full, config)

    app.add_typer(policy_app, name="policy")


def _train_from_fleet(since: str, full: bool, config: str | None) -> None:
    from ..policy.fleet_training import train_from_fleet
    from ..reports.spend import parse_since

    cfg, r = _client(config)
    days = parse_since(since) / 86_400
    with _common.clear_errors():
        summary = train_from_fleet(cfg, r, since_days=days, full=full)
    print(json.dumps(summary, indent=2, default=str))
