"""Several simulated hosts from one fleet config, and an admin endpoint to break them.

In-process (tests, threads)::

    with SimFleet.from_config(cfg, scale=0.01) as sim:   # every host with simulated = true
        cfg = sim.config                                 # same config, real ports filled in
        sim.fault("ollama", "rate_limit", retry_after=2, count=1)
        sim.down("ollama"); sim.up("ollama")
        sim.counters("runpod")["run"]

The same methods exist on :class:`tierfleet.lab.sim.client.SimAdmin`, which talks to
the admin endpoint of a sim running in another process.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ... import tokens
from ...backends import SIMULATED_HEADER
from ...config import FleetConfig, HostConfig
from .server import SimHost
from .wire import ModelInfo

SCALE_ENV = "TIERFLEET_SIM_SCALE"


def default_scale() -> float:
    raw = os.environ.get(SCALE_ENV)
    if not raw:
        return 1.0
    value = float(raw)
    if value < 0:
        raise ValueError(f"{SCALE_ENV} must be >= 0")
    return value


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    if parts.port is not None:
        return parts.port
    return 443 if parts.scheme == "https" else 80


def _with_port(url: str, port: int, bind: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("http", f"{bind}:{port}", parts.path, parts.query, parts.fragment))


def _models(config: FleetConfig, name: str, host: HostConfig) -> list[ModelInfo]:
    out = []
    for m in host.models:
        mc = config.models.get(m)
        out.append(
            ModelInfo(
                name=m,
                context_window=config.context_window(name, m),
                vision=bool(mc and mc.vision),
            )
        )
    return out


class SimFleet:
    """Simulated hosts, each on its own loopback port, plus an admin endpoint."""

    def __init__(
        self,
        hosts: list[SimHost],
        *,
        config: FleetConfig | None = None,
        admin_port: int | None = 0,
        bind: str = "127.0.0.1",
    ) -> None:
        self.hosts: dict[str, SimHost] = {h.name: h for h in hosts}
        self._config = config
        self._admin_port = admin_port
        self.bind = bind
        self._admin: ThreadingHTTPServer | None = None
        self._admin_thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls,
        config: FleetConfig,
        *,
        scale: float | None = None,
        admin_port: int | None = 0,
        names: list[str] | None = None,
        all_hosts: bool = False,
        free_ports: bool = False,
        bind: str = "127.0.0.1",
        parallel: int = 4,
    ) -> SimFleet:
        """Hosts for every ``simulated = true`` host of the config (or ``names``, or ``all_hosts``).

        The port comes from the host's URL; a URL with port 0 (or ``free_ports=True``)
        gets a free port, and :attr:`config` then holds the URLs actually used.
        """
        scale = default_scale() if scale is None else scale
        chosen = [
            n
            for n, h in config.hosts.items()
            if (names is not None and n in names) or (names is None and (all_hosts or h.simulated))
        ]
        if names is not None:
            unknown = sorted(set(names) - set(config.hosts))
            if unknown:
                raise ValueError(f"no such host in the config: {', '.join(unknown)}")
        hosts: list[SimHost] = []
        for n in chosen:
            h = config.hosts[n]
            # Port 0: the kernel picks one when the host first listens (no race with other
            # processes, unlike probing for a free port first); later "up"s reuse it.
            port = 0 if free_ports else _port_of(h.url)
            hosts.append(
                SimHost(
                    n,
                    h.kind,
                    port,
                    models=_models(config, n, h),
                    path=urlsplit(h.url).path,
                    scale=scale,
                    api_key_env=h.api_key_env,
                    parallel=parallel,
                    bind=bind,
                )
            )
        return cls(hosts, config=config, admin_port=admin_port, bind=bind)

    # -- life ---------------------------------------------------------------------

    def start(self) -> SimFleet:
        # Load the tokenizer now, in the background: the first answer then costs what the
        # latency model says, not the encoding's load time.
        threading.Thread(target=tokens.encoding, name="sim-tokenizer", daemon=True).start()
        started: list[SimHost] = []
        try:
            for h in self.hosts.values():
                h.up()
                started.append(h)
            if self._admin_port is not None:
                self._start_admin()
        except OSError:
            for h in started:
                h.down()
            raise
        return self

    def stop(self) -> None:
        for h in self.hosts.values():
            h.clear()  # release hung requests so their threads end
            h.down()
        if self._admin is not None:
            self._admin.shutdown()
            self._admin.server_close()
            self._admin = None

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_admin(self) -> None:
        fleet = self

        class Admin(_AdminHandler):
            sim = fleet

        server = ThreadingHTTPServer((self.bind, self._admin_port or 0), Admin)
        server.daemon_threads = True
        self._admin = server
        self._admin_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sim-admin",
            daemon=True,
        )
        self._admin_thread.start()

    # -- where things are ------------------------------------------------------------

    @property
    def admin_url(self) -> str | None:
        if self._admin is None:
            return None
        return f"http://{self.bind}:{self._admin.server_address[1]}"

    @property
    def urls(self) -> dict[str, str]:
        return {n: h.url for n, h in self.hosts.items()}

    @property
    def config(self) -> FleetConfig:
        """The config this fleet was built from, with each simulated host's URL on its real port.

        Read it after :meth:`start`: ports chosen by the kernel are known only then.
        """
        if self._config is None:
            raise ValueError("this SimFleet was not built from a config")
        if any(h.port == 0 for h in self.hosts.values()):
            raise RuntimeError("start the SimFleet first: its ports are not chosen yet")
        hosts = dict(self._config.hosts)
        for n, h in self.hosts.items():
            hosts[n] = hosts[n].model_copy(
                update={"url": _with_port(hosts[n].url, h.port, self.bind), "simulated": True}
            )
        return self._config.model_copy(update={"hosts": hosts})

    def host(self, name: str) -> SimHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no simulated host {name!r}; have {sorted(self.hosts)}") from None

    # -- the admin verbs (same names on SimAdmin) ------------------------------------

    def fault(self, name: str, kind: str, **params: Any) -> dict[str, Any]:
        """Inject a fault: ``down``/``up`` or a kind of :data:`tierfleet.lab.sim.faults.FAULT_KINDS`."""
        if kind == "down":
            self.down(name)
        elif kind == "up":
            self.up(name)
        else:
            self.host(name).set_fault(kind, **params)
        return self.status(name)

    def clear(self, name: str | None = None, kind: str | None = None) -> None:
        for h in [self.host(name)] if name else list(self.hosts.values()):
            h.clear(kind)

    def down(self, name: str) -> None:
        self.host(name).down()

    def up(self, name: str) -> None:
        self.host(name).up()

    def counters(self, name: str) -> dict[str, int]:
        return dict(self.host(name).counters)

    def requests(self, name: str) -> list[dict[str, Any]]:
        return list(self.host(name).requests)

    def calls(self, name: str) -> list[dict[str, Any]]:
        """Every generation request ``name`` received: route, body start, arrival time."""
        return list(self.host(name).calls)

    def expire_jobs(self, name: str) -> int:
        return self.host(name).expire_jobs()

    def reset(self, name: str | None = None) -> None:
        """Clear faults, counters, recorded requests and Runpod jobs; bring hosts back up."""
        for h in [self.host(name)] if name else list(self.hosts.values()):
            h.reset()
            h.up()

    def status(self, name: str | None = None) -> dict[str, Any]:
        if name is not None:
            return self.host(name).status()
        return {n: h.status() for n, h in self.hosts.items()}


class _AdminHandler(BaseHTTPRequestHandler):
    """JSON admin API. GET /hosts, GET /hosts/{n}, GET /hosts/{n}/requests,
    POST /hosts/{n}/fault {"kind": ..., params}, POST /hosts/{n}/clear {"kind"?},
    POST /hosts/{n}/down, POST /hosts/{n}/up, POST /hosts/{n}/reset,
    POST /hosts/{n}/expire-jobs, POST /reset."""

    sim: SimFleet
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(SIMULATED_HEADER, "1")
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 100_000:
            raise ValueError("admin body too large")
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        if not isinstance(body, dict):
            raise ValueError("admin body must be a JSON object")
        return body

    def do_GET(self) -> None:
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        try:
            if parts == ["hosts"]:
                self._send(200, self.sim.status())
            elif len(parts) == 2 and parts[0] == "hosts":
                self._send(200, self.sim.status(parts[1]))
            elif len(parts) == 3 and parts[0] == "hosts" and parts[2] == "requests":
                self._send(200, self.sim.requests(parts[1]))
            else:
                self._send(404, {"error": "unknown admin path"})
        except KeyError as exc:
            self._send(404, {"error": str(exc)})

    def do_POST(self) -> None:
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        try:
            body = self._body()
            if parts == ["reset"]:
                self.sim.reset()
                self._send(200, self.sim.status())
                return
            if len(parts) != 3 or parts[0] != "hosts":
                self._send(404, {"error": "unknown admin path"})
                return
            name, verb = parts[1], parts[2]
            if verb == "fault":
                kind = str(body.pop("kind", ""))
                self._send(200, self.sim.fault(name, kind, **body))
            elif verb == "clear":
                self.sim.clear(name, body.get("kind"))
                self._send(200, self.sim.status(name))
            elif verb in ("down", "up"):
                getattr(self.sim, verb)(name)
                self._send(200, self.sim.status(name))
            elif verb == "reset":
                self.sim.reset(name)
                self._send(200, self.sim.status(name))
            elif verb == "expire-jobs":
                self._send(200, {"expired": self.sim.expire_jobs(name)})
            else:
                self._send(404, {"error": f"unknown admin verb {verb!r}"})
        except KeyError as exc:
            self._send(404, {"error": str(exc)})
        except (TypeError, ValueError) as exc:
            self._send(400, {"error": str(exc)})
