"""``python -m tierfleet.lab.sim --config FILE [--scale S] [--admin-port P] [--host NAME ...] [--all]
[--write-config OUT]``.

Prints one JSON line once every host listens::

    {"simulated": true, "admin": url, "hosts": {name: url}, "scale": s, "config": OUT|null}

then serves until SIGTERM or Ctrl-C. Hosts whose URL has port 0 get a free port;
``--write-config`` writes the config with the ports actually used, for workers.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable

from ...config import load_config
from ...errors import ConfigError
from .configfile import write_config
from .fleet import SimFleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierfleet.lab.sim", description=__doc__)
    parser.add_argument("--config", required=False, help="fleet config (default: TIERFLEET_CONFIG)")
    parser.add_argument("--scale", type=float, default=None, help="latency factor (env TIERFLEET_SIM_SCALE)")
    parser.add_argument("--admin-port", type=int, default=0, help="admin endpoint port (0: any free)")
    parser.add_argument("--host", action="append", dest="names", help="only this host (repeatable)")
    parser.add_argument("--all", action="store_true", help="simulate every host, not only simulated = true")
    parser.add_argument("--write-config", default=None, help="write the config with real ports")
    args = parser.parse_args(argv)
    return serve(
        args.config,
        scale=args.scale,
        admin_port=args.admin_port,
        names=args.names,
        all_hosts=args.all,
        write_config_path=args.write_config,
    )


def ready_line(fleet: SimFleet, config_path: str | None = None) -> str:
    first = next(iter(fleet.hosts.values()))
    return json.dumps(
        {
            "simulated": True,
            "admin": fleet.admin_url,
            "hosts": fleet.urls,
            "scale": first.scale,
            "config": config_path,
        }
    )


def serve(
    config_path: str | None,
    *,
    scale: float | None = None,
    admin_port: int | None = 0,
    names: list[str] | None = None,
    all_hosts: bool = False,
    write_config_path: str | None = None,
    announce: Callable[[SimFleet], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Start, announce, serve until ``stop`` (or SIGTERM/SIGINT), stop. Returns an exit code."""
    try:
        config = load_config(config_path)
        fleet = SimFleet.from_config(
            config, scale=scale, admin_port=admin_port, names=names, all_hosts=all_hosts
        )
    except (ConfigError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not fleet.hosts:
        print(
            "no host to simulate: mark hosts with simulated = true (or pass --all)",
            file=sys.stderr,
        )
        return 2
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
    try:
        fleet.start()
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 1
    try:
        if write_config_path:
            write_config(fleet.config, write_config_path)
        if announce is not None:
            announce(fleet)
        else:
            print(ready_line(fleet, write_config_path), flush=True)
        stop.wait()
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
