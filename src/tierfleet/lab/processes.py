"""Child processes of the lab: a free port, stopping a child, and the Celery worker command line.

Standard library only: ``tierfleet worker`` builds its command line here
(:class:`CeleryWorker`), and a producer's install must not pull in anything for it.
The same line is what the demo, the benchmarks and the integration tests start,
so they run workers exactly the way operators do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["CeleryWorker", "ChildProcess", "free_port"]


def free_port(bind: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


class ChildProcess:
    """A server this process started in a child: ``stop()`` ends it and closes its pipes.

    SIGTERM first so the child can shut down cleanly; SIGKILL after
    ``stop_grace_s`` so a stuck child never outlives the test or the demo.
    """

    stop_grace_s: float = 5.0
    proc: subprocess.Popen[Any] | None = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@dataclass
class CeleryWorker:
    """``celery -A tierfleet.worker worker -Q TIER``: one worker node for one or more tiers.

    ``tier`` may list several queues (``a,b``). ``config_path`` goes to the child as
    ``TIERFLEET_CONFIG``; None leaves the environment's choice alone.
    """

    tier: str
    config_path: str | Path | None = None
    name: str | None = None
    concurrency: int = 1
    pool: str = "prefork"
    loglevel: str = "WARNING"
    app: str = "tierfleet.worker"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def node_name(self) -> str:
        # %h: Celery puts the hostname in, so one name works on every machine.
        # a+b@%h for several tiers, as the bare ``celery`` command names it (worker.node_name).
        return self.name or f"{'+'.join(self.tier.split(','))}@%h"

    def argv(self) -> list[str]:
        # Events on (-E) for Flower; no gossip or mingle: workers never talk to each
        # other here, and both cost a round of broadcasts at every start.
        return [sys.executable, "-m", "celery", "-A", self.app, "worker", "-Q", self.tier,
                "-n", self.node_name, "-c", str(self.concurrency), "-P", self.pool, "-E",
                "--without-gossip", "--without-mingle", "-l", self.loglevel]

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's environment: the config file wins over a Redis URL in the parent's."""
        env = dict(os.environ if base is None else base)
        if self.config_path is not None:
            env["TIERFLEET_CONFIG"] = str(self.config_path)
            env.pop("TIERFLEET_REDIS_URL", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def popen(self, log: IO[bytes] | int | None = None, *, cwd: str | Path | None = None,
              new_session: bool = False, base_env: Mapping[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        """Start the worker; its output goes to ``log`` (stdout and stderr together)."""
        return subprocess.Popen(self.argv(), env=self.env(base_env), stdout=log,
                                stderr=subprocess.STDOUT if log is not None else None,
                                cwd=str(cwd) if cwd is not None else None,
                                start_new_session=new_session)
