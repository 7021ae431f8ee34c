"""Shared helpers for CLI commands: config loading and clear one-line errors."""

from __future__ import annotations

import re
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
# The Redis the command was pointed at (password redacted), for the error that says it
# cannot be reached: a timeout's own text names no host.
_redis_where = "Redis"


def redact_url(url: str) -> str:
    # A Redis URL may carry a password: never print it.
    return re.sub(r"//[^@/;]*@", "//***@", url)


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
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # TimeoutError is no ConnectionError: a Redis that accepts and never answers.
        fail(f"cannot reach {_redis_where} ({exc or type(exc).__name__}); "
             "set TIERFLEET_REDIS_URL or redis_url in the config")
    except redis.RedisError as exc:  # NOAUTH, WRONGPASS, MISCONF, OOM...: Redis said no
        fail(f"{_redis_where} refused the command: {exc or type(exc).__name__}")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def config_option() -> Any:
    return typer.Option(
        None, "--config", "-c",
        help="fleet config file (default: $TIERFLEET_CONFIG, ./fleet.toml, built-in)",
    )


def get(config_path: str | None) -> FleetConfig:
    global _redis_where
    with clear_errors():
        cfg = load_config(config_path)
        _redis_where = f"Redis at {redact_url(cfg.redis_url)}"
        return cfg
    raise AssertionError  # unreachable: clear_errors exits


def since_seconds(since: str, option: str = "--since") -> float:
    """A ``--since`` period in seconds, or one line naming the option and what it takes,
    exit 2 (as click's bad parameter). Every command with a period parses it here, before
    any Redis is read, so they accept the same periods and refuse them alike."""
    from ..reports.spend import MAX_SINCE_DAYS, parse_since

    try:
        return parse_since(since)
    except ValueError:
        fail(f"{option}: expected a period like 30d, 12h or 2w, above 0 and at most "
             f"{MAX_SINCE_DAYS}d, got {since!r}")
        raise  # unreachable: fail exits


def run(fn: Callable[[], T]) -> T:
    with clear_errors():
        return fn()
    sys.exit(2)
