"""``tierfleet feedback``, ``tierfleet train-fleet`` and
``tierfleet policy list|promote|shadow-report|rollback``.

The router's learning loop from the command line: a producer's verdict on an answer
becomes a label; a candidate policy is trained from the fleet's labels and judged on
labelled traffic it did not train on; a candidate is shadow-routed (its decisions
logged, not acted on), then rolled out in stages (sticky per job id), or rolled back.
The work is in :mod:`tierfleet.labels`, :mod:`tierfleet.policy.fleet_training`,
:mod:`tierfleet.policy.versions` and :mod:`tierfleet.policy.shadowlog`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from . import _common

policy_app = typer.Typer(help="Policy versions: list them, promote a candidate in stages "
                              "(shadow, then its shares), see its shadow decisions, roll back.",
                         no_args_is_help=True)


def _where(state: dict[str, Any]) -> str:
    """The rollout in one line: who routes, and what the candidate is doing."""
    if not state["candidate"]:
        return f"current: {state['current']}  candidate: -"
    doing = ("shadow: decisions logged, none acted on" if state.get("phase") == "shadow"
             else f"share {state['share']:.0%}")
    return f"current: {state['current']}  candidate: {state['candidate']} ({doing})"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _shadow_lines(s: Any) -> list[str]:
    change = s.cost_change
    change_s = "-" if change is None else ("from $0" if change == float("inf") else f"{change:+.1%}")
    return [
        f"shadow of {s.candidate} (against {s.current or '-'}): {s.decisions} decisions, "
        f"agreement {_pct(s.agreement_rate)}",
        f"the candidate would send {s.cheaper_tier} job(s) to a cheaper tier and "
        f"{s.pricier_tier} to a pricier one",
        f"estimated cost per request: ${s.cost_per_request or 0:.6f} as routed, "
        f"${s.cand_cost_per_request or 0:.6f} with the candidate ({change_s})",
    ]


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
    _common.console.print(f"{_where(state)}  {state['reason']}", markup=False)
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
    force: bool = typer.Option(False, help="start a candidate whose evaluation was refused, or "
                                           "take one out of shadow despite its cost alert"),
    config: str | None = _common.config_option(),
) -> None:
    """Start a candidate's rollout (in shadow when learning.shadow_stage, else its first
    share), or move the rolling one a stage on: shadow -> 5% -> 50% -> 100%; after the
    last stage it becomes the current policy."""
    from ..policy.versions import SHADOW, Rollout

    cfg, r = _client(config)
    with _common.clear_errors():
        rollout = Rollout(r, cfg)
        before = rollout.state()
        leaving_shadow = version is None and before["phase"] == SHADOW
        summary = rollout.shadow_log().summary(before["candidate"]) if leaving_shadow else None
        try:
            state = (rollout.start(version, "promoted from the command line", force=force)
                     if version else rollout.advance("promoted from the command line", force=force))
        except ValueError as exc:
            _common.fail(str(exc))
    if summary is not None:
        # What the candidate did in shadow is the evidence this step rests on: show it.
        for line in _shadow_lines(summary):
            _common.console.print(line, markup=False)
    _common.console.print(_where(state), markup=False)


@policy_app.command("shadow-report")
def policy_shadow_report(
    version: Annotated[str | None, typer.Argument(help="a candidate's log (default: the one "
                                                       "in shadow now)")] = None,
    as_json: bool = typer.Option(False, "--json"),
    config: str | None = _common.config_option(),
) -> None:
    """What a candidate in shadow would have done: agreement with the current policy,
    jobs it would send to a cheaper or a pricier tier, estimated cost per request, and
    whether leaving shadow would be refused. Job ids, tiers and models only: no prompts."""
    from ..policy.versions import Rollout

    cfg, r = _client(config)
    with _common.clear_errors():
        rollout = Rollout(r, cfg)
        state = rollout.state()
        version = version or state["candidate"]
        if not version:
            _common.fail("no candidate is rolling out: name a version whose shadow log to read")
        summary = rollout.shadow_log().summary(version)
        alerts = rollout.shadow_guard() if version == state["candidate"] else []
    if as_json:
        print(json.dumps({"rollout": state, "shadow": summary.shown(),
                          "alerts": [a.reason for a in alerts]}, indent=2, default=str))
        return
    _common.console.print(_where(state), markup=False)
    for line in _shadow_lines(summary):
        _common.console.print(line, markup=False)
    for a in alerts:
        _common.console.print(f"leaving shadow is refused: {a.reason}", markup=False)


@policy_app.command("rollback")
def policy_rollback(reason: str = typer.Option("rolled back from the command line"),
                    config: str | None = _common.config_option()) -> None:
    """Drop the rolling candidate (in shadow or live), or go back to the previous current version."""
    from ..policy.versions import Rollout

    cfg, r = _client(config)
    with _common.clear_errors():
        try:
            state = Rollout(r, cfg).rollback(reason)
        except ValueError as exc:
            _common.fail(str(exc))
    _common.console.print(_where(state), markup=False)


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

    days = _common.since_seconds(since) / 86_400  # before the config: a typo needs no Redis
    cfg, r = _client(config)
    with _common.clear_errors():
        summary = train_from_fleet(cfg, r, since_days=days, full=full)
    print(json.dumps(summary, indent=2, default=str))
