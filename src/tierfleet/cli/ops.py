"""Commands for operating the fleet: api, flower, metrics (and the demo)."""

from __future__ import annotations

import threading
from pathlib import Path

import typer

from ..extras import require
from ._common import clear_errors, config_option, console, get


def register(app: typer.Typer) -> None:
    @app.command()
    def api(
        host: str = typer.Option("127.0.0.1", help="address to listen on"),
        port: int = typer.Option(8000, help="port to listen on"),
        insecure_no_auth: bool = typer.Option(
            False, "--insecure-no-auth",
            help="serve without producer tokens on a non-loopback address (anyone who can "
                 "reach it may submit jobs)"),
        log_level: str = typer.Option("info", help="uvicorn log level"),
        config: str = config_option(),
    ) -> None:
        """HTTP API: /v1/jobs, /v1/status, OpenAI-compatible /v1/chat/completions, /metrics.

        Producer tokens come from the environment variable named by api.tokens_env
        (default TIERFLEET_API_TOKENS): comma-separated name:token entries, several per
        producer to rotate, or bare tokens of the producer "default". A producer sees
        only its own jobs.
        """
        with clear_errors():
            require("api")
        from ..api import load_tokens, serve
        from ..api.tenants import parse_tokens

        cfg = get(config)
        with clear_errors():
            producers = sorted(set(parse_tokens(load_tokens(cfg)).values()))
        auth = (f"bearer tokens of {len(producers)} producer(s): {', '.join(producers)}"
                if producers else "no auth")
        console.print(f"tierfleet API on http://{host}:{port} ({auth}; schema at /openapi.json)",
                      soft_wrap=True)
        with clear_errors():
            serve(cfg, host, port, insecure_no_auth=insecure_no_auth, log_level=log_level)

    @app.command()
    def flower(
        port: int = typer.Option(5555, help="port to listen on"),
        address: str = typer.Option("127.0.0.1", help="address to listen on"),
        basic_auth: str = typer.Option(
            None, "--basic-auth", envvar="TIERFLEET_FLOWER_BASIC_AUTH",
            help="user:password (comma separated for several); required off loopback"),
        max_tasks: int = typer.Option(10_000, help="tasks Flower keeps in memory"),
        config: str = config_option(),
    ) -> None:
        """Flower against the configured broker (task events on; tierfleet.run_job readable)."""
        from ..flower import flower_command, run_flower

        with clear_errors():
            require("flower")
            cmd = flower_command(config, port=port, address=address, basic_auth=basic_auth,
                                 max_tasks=max_tasks)
        access = "basic auth" if cmd.authenticated else "open API on loopback"
        console.print(f"Flower on {cmd.url} ({access})")
        raise typer.Exit(run_flower(cmd))

    @app.command()
    def metrics(
        port: int = typer.Option(9808, help="port to listen on"),
        address: str = typer.Option("127.0.0.1", help="address to listen on"),
        config: str = config_option(),
    ) -> None:
        """Serve the fleet-wide Prometheus metrics on /metrics (read from Redis at each scrape)."""
        from ..metrics import serve

        cfg = get(config)
        with clear_errors():
            server, _ = serve(cfg, port=port, addr=address)
        console.print(f"fleet metrics on http://{address}:{port}/metrics")
        stop = threading.Event()
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()

    @app.command()
    def demo(
        folder: Path = typer.Option(Path(".demo"), help="where the demo keeps its files"),
        redis_url: str = typer.Option(None, help="use this Redis instead of a private embedded one"),
        real_model: bool = typer.Option(True, help="run the local-mac tier on a real SmolLM2"),
        scale: float = typer.Option(0.05, help="simulated latency scale (1.0 = the profiled real timings)"),
        keep: bool = typer.Option(False, help="keep the fleet running at the end (Ctrl-C stops)"),
    ) -> None:
        """The story in a few minutes: inventory, fleet up, a day of jobs, a host down, the bill."""
        with clear_errors():
            require("lab")
        from ..lab.demo import run

        with clear_errors():
            code = run(folder=folder.resolve(), redis_url=redis_url, real_model=real_model,
                       scale=scale, keep=keep)
        raise typer.Exit(code)
