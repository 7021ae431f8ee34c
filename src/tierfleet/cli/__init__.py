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
import sys

import typer

from ..connections import use_interactive_timeouts

app = typer.Typer(
    name="tierfleet",
    help="Send every AI job to the cheapest place that can do it well, and never lose it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

_AREAS = ("jobs", "route", "learn", "money", "books", "lab", "ops")
# Commands that run until stopped keep the store clients' patient timeouts (a slow Redis
# must not stop a reaper); every other command is one a person waits on.
SERVICES = frozenset({"worker", "reaper", "api", "flower", "metrics", "sim", "local-model",
                      "demo", "ledger-writer"})


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
    from ._common import clear_errors

    # Here, not in a typer callback: the timeouts are process-wide, and a command run in
    # process (CliRunner, a notebook) must not shorten every later client's patience.
    if (sys.argv[1:2] or [""])[0] not in SERVICES:
        use_interactive_timeouts()

    # The net under every command: a Redis or tierfleet error that a command did not
    # catch itself is still one line and a non-zero exit, never a traceback.
    try:
        with clear_errors():
            app()
    except typer.Exit as exc:  # what clear_errors raises, here outside click's handling
        sys.exit(exc.exit_code)
