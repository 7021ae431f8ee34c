"""The ``tierfleet`` command. Each area registers its commands from its own module:

    jobs     submit, result, status, dlq, worker, reaper
    route    route, train                  (routing policy)
    learn    feedback, train-fleet, policy (the router learns from the fleet)
    money    report, inventory              (ledger and projections)
    lab      sim, local-model               (simulated hosts, a real small model)
    ops      api, flower, demo              (operating the fleet)
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="tierfleet",
    help="Send every AI job to the cheapest place that can do it well, and never lose it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

_AREAS = ("jobs", "route", "learn", "money", "books", "lab", "ops")


def _register() -> None:
    for area in _AREAS:
        try:
            module = importlib.import_module(f"{__name__}.{area}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{area}":
                raise
            continue  # an area not built yet
        module.register(app)


_register()


def main() -> None:
    app()
