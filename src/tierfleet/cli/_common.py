"""Shared helpers for CLI commands: config loading and clear one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
import typer
from rich.console import Console
from rich.markup import escape

from ..config import FleetConfig, load_config
from ..errors import TierfleetError

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 2) -> None:
    # Escaped: messages quote things like 'tierfleet[api]' that rich would read as markup;
    # soft-wrapped: one line, whatever the terminal's width, so it can be grepped and copied.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Known failures become one line on stderr and a non-zero exit, not a traceback."""
    try:
        yield
    except TierfleetError as exc:
        fail(str(exc))
    except redis.ConnectionError as exc:
        fail(f"cannot reach Redis ({exc}); set TIERFLEET_REDIS_URL or redis_url in the config")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def config_option() -> Any:
    return typer.Option(
        None, "--config", "-c",
        help="fleet config file (default: $TIERFLEET_CONFIG, ./fleet.toml, built-in)",
    )


def get(config_path: str | None) -> FleetConfig:
    with clear_errors():
        return load_config(config_path)
    raise AssertionError  # unreachable: clear_errors exits


def run(fn: Callable[[], T]) -> T:
    with clear_errors():
        return fn()
    sys.exit(2)
