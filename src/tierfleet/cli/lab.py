"""``tierfleet sim`` (simulated hosts) and ``tierfleet local-model serve`` (a real small model)."""

from __future__ import annotations

import typer
from rich.table import Table

from ._common import config_option, console, fail


def register(app: typer.Typer) -> None:
    local = typer.Typer(help="A real small model (SmolLM2-135M on llama.cpp) as an OpenAI host.")
    app.add_typer(local, name="local-model")

    @app.command()
    def sim(
        config: str = config_option(),
        scale: float = typer.Option(
            None,
            help="latency factor: 1 = the profiled real timings, 0.01 for tests "
            "(default: $TIERFLEET_SIM_SCALE or 1)",
        ),
        admin_port: int = typer.Option(0, help="port of the fault-injection admin API (0: free)"),
        host: list[str] = typer.Option(None, "--host", help="only these hosts (repeatable)"),
        all_hosts: bool = typer.Option(False, "--all", help="every host, not only simulated = true"),
        write_config: str = typer.Option(
            None, help="write the config with the ports really used (URLs with port 0)"
        ),
        json_line: bool = typer.Option(False, "--json", help="print one JSON line, not a table"),
    ) -> None:
        """Serve SIMULATED model hosts (Ollama, OpenAI, Runpod wire formats) on loopback."""
        from ..lab.sim import SimFleet
        from ..lab.sim.__main__ import ready_line, serve

        def announce(fleet: SimFleet) -> None:
            if json_line:
                print(ready_line(fleet, write_config), flush=True)
                return
            first = next(iter(fleet.hosts.values()))
            table = Table(title=f"SIMULATED hosts (latency x{first.scale:g})")
            for col in ("host", "kind", "url", "models"):
                table.add_column(col)
            for name, h in fleet.hosts.items():
                table.add_row(name, h.kind, h.url, ", ".join(sorted(h.models)))
            console.print(table)
            if fleet.admin_url:
                console.print(
                    f"admin: {fleet.admin_url}  e.g. curl -X POST "
                    f"{fleet.admin_url}/hosts/<host>/down  (Ctrl-C to stop)",
                    highlight=False,
                )

        code = serve(
            config,
            scale=scale,
            admin_port=admin_port,
            names=host or None,
            all_hosts=all_hosts,
            write_config_path=write_config,
            announce=announce,
        )
        if code:
            raise typer.Exit(code)

    @local.command("serve")
    def local_serve(
        port: int = typer.Option(8089, help="port to listen on"),
        bind: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
        ctx: int = typer.Option(4096, help="context window in tokens"),
        threads: int = typer.Option(None, help="CPU threads (default: half the cores, up to 4)"),
        verbose: bool = typer.Option(False, help="show llama.cpp's log"),
    ) -> None:
        """Run SmolLM2-135M-Instruct on llama.cpp's server as an OpenAI-compatible host."""
        from ..extras import MissingExtra, require
        from ..lab.localmodel import LOCAL_MODEL_NAME, LocalModelError, serve

        try:
            require("lab", "xllamacpp")
        except MissingExtra as exc:
            fail(str(exc))

        def announce(url: str) -> None:
            console.print(f"local model [bold]{LOCAL_MODEL_NAME}[/] at {url}  (Ctrl-C to stop)")
            console.print(
                "config:\n"
                "  [hosts.local-model]\n"
                '  kind = "openai"\n'
                f'  url = "{url}"\n'
                '  tier = "local-mac"\n'
                f'  models = ["{LOCAL_MODEL_NAME}"]\n'
                f"  context_window = {ctx}",
                highlight=False,
            )

        try:
            serve(port, bind, n_ctx=ctx, threads=threads, verbose=verbose, on_ready=announce)
        except LocalModelError as exc:
            fail(str(exc))
