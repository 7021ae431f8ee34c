"""Driving a sim that runs in another process: the admin client and a subprocess handle.

Celery workers run in their own processes, so demos and integration tests often
start the sim as ``python -m tierfleet.lab.sim`` and break hosts through its admin
endpoint. :class:`SimAdmin` has the same verbs as :class:`SimFleet`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import httpx

from ..processes import ChildProcess


class SimAdmin:
    """HTTP client of a sim's admin endpoint (``tierfleet sim`` prints its URL)."""

    def __init__(self, admin_url: str, *, timeout_s: float = 5.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self._client.post(f"{self.admin_url}{path}", json=body or {})
        if r.status_code >= 400:
            raise ValueError(f"sim admin {path}: {r.status_code} {r.text}")
        return r.json()

    def _get(self, path: str) -> Any:
        r = self._client.get(f"{self.admin_url}{path}")
        if r.status_code >= 400:
            raise ValueError(f"sim admin {path}: {r.status_code} {r.text}")
        return r.json()

    def fault(self, name: str, kind: str, **params: Any) -> dict[str, Any]:
        return self._post(f"/hosts/{name}/fault", {"kind": kind, **params})

    def clear(self, name: str | None = None, kind: str | None = None) -> None:
        names = [name] if name else list(self.status())
        for n in names:
            self._post(f"/hosts/{n}/clear", {"kind": kind} if kind else {})

    def down(self, name: str) -> None:
        self._post(f"/hosts/{name}/down")

    def up(self, name: str) -> None:
        self._post(f"/hosts/{name}/up")

    def counters(self, name: str) -> dict[str, int]:
        return dict(self._get(f"/hosts/{name}")["counters"])

    def requests(self, name: str) -> list[dict[str, Any]]:
        return list(self._get(f"/hosts/{name}/requests"))

    def expire_jobs(self, name: str) -> int:
        return int(self._post(f"/hosts/{name}/expire-jobs")["expired"])

    def reset(self, name: str | None = None) -> None:
        self._post(f"/hosts/{name}/reset" if name else "/reset")

    def status(self, name: str | None = None) -> dict[str, Any]:
        return dict(self._get(f"/hosts/{name}" if name else "/hosts"))


class SimProcess(ChildProcess):
    """``python -m tierfleet.lab.sim`` as a child process; ``start()`` returns once every host listens.

    ``hosts`` maps host name to URL and ``admin`` is a :class:`SimAdmin`, both read from
    the JSON line the sim prints when ready.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        scale: float | None = None,
        admin_port: int = 0,
        names: list[str] | None = None,
        all_hosts: bool = False,
        env: dict[str, str] | None = None,
        write_config: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 15.0,
    ) -> None:
        self.config_path = Path(config_path)
        self.scale = scale
        self.admin_port = admin_port
        self.names = names
        self.all_hosts = all_hosts
        self.env = env
        # Where the child writes the config with the ports it really uses (URLs with port 0).
        self.write_config = Path(write_config) if write_config else None
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.hosts: dict[str, str] = {}
        self.admin_url: str | None = None
        self._admin: SimAdmin | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tierfleet.lab.sim", "--config", str(self.config_path)]
        cmd += ["--admin-port", str(self.admin_port)]
        if self.scale is not None:
            cmd += ["--scale", repr(self.scale)]
        for n in self.names or []:
            cmd += ["--host", n]
        if self.all_hosts:
            cmd.append("--all")
        if self.write_config is not None:
            cmd += ["--write-config", str(self.write_config)]
        return cmd

    def start(self) -> SimProcess:
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        line = _read_line(self.proc.stdout, self.start_timeout_s)
        if not line:
            err = ""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()[-2000:]
            self.stop()
            raise RuntimeError(f"the simulated hosts did not start: {err.strip() or 'no answer'}")
        ready = json.loads(line)
        self.hosts = dict(ready["hosts"])
        self.admin_url = ready.get("admin")
        return self

    @property
    def admin(self) -> SimAdmin:
        if self.admin_url is None:
            raise RuntimeError("the sim runs without an admin endpoint")
        if self._admin is None:
            self._admin = SimAdmin(self.admin_url)
        return self._admin

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        super().stop()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(stream: IO[str] | None, timeout_s: float) -> str:
    """One line from a child's stdout, or '' when it does not come in time."""
    if stream is None:
        return ""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return box[0].strip() if box else ""
