"""``python -m tierfleet.sim --config FILE [--scale S] [--admin-port P] [--host NAME ...] [--all]``.

Prints one JSON line when every host listens (``{"admin": url, "hosts": {name: url},
"scale": s, "simulated": true}``), then serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from ..config import load_config
from ..errors import ConfigError
from .fleet import SimFleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierfleet.sim", description=__doc__)
    parser.add_argument("--config", required=False, help="fleet config (default: TIERFLEET_CONFIG)")
    parser.add_argument(
        "--scale", type=float, default=None, help="latency factor (env TIERFLEET_SIM_SCALE)"
    )
    parser.add_argument(
        "--admin-port", type=int, default=0, help="admin endpoint port (0: any free)"
    )
    parser.add_argument("--host", action="append", dest="names", help="only this host (repeatable)")
    parser.add_argument(
        "--all", action="store_true", help="simulate every host, not only simulated = true"
    )
    args = parser.parse_args(argv)
    return serve(
        args.config,
        scale=args.scale,
        admin_port=args.admin_port,
        names=args.names,
        all_hosts=args.all,
    )


def serve(
    config_path: str | None,
    *,
    scale: float | None = None,
    admin_port: int | None = 0,
    names: list[str] | None = None,
    all_hosts: bool = False,
) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    fleet = SimFleet.from_config(
        config, scale=scale, admin_port=admin_port, names=names, all_hosts=all_hosts
    )
    if not fleet.hosts:
        print(
            "no host to simulate: mark hosts with simulated = true (or pass --all)", file=sys.stderr
        )
        return 2
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        fleet.start()
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 1
    try:
        ready = {
            "simulated": True,
            "admin": fleet.admin_url,
            "hosts": fleet.urls,
            "scale": next(iter(fleet.hosts.values())).scale,
        }
        print(json.dumps(ready), flush=True)
        stop.wait()
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
