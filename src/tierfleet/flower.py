"""Flower for the fleet: ``celery -A tierfleet.worker flower`` against the configured broker.

Flower builds its Celery app from :mod:`tierfleet.worker`, so it sees the same
broker, queues and serializer settings as every worker. Task events: workers
send them (``worker_send_task_events``), producers send ``task-sent``
(``task_send_sent_event``), and Flower keeps switching events on for workers
started without ``-E``. Every task is ``tierfleet.run_job``; its kwargs are the
job, its route, the trail and the attempt count, as JSON, which Flower shows as
they are (Celery cuts the shown repr at 1 KiB). API keys are never part of a
job, so none can appear there.

Access. Flower's pages and REST API can revoke and shut down workers. On a
loopback address the REST API is opened without auth
(``FLOWER_UNAUTHENTICATED_API=true``: only local processes can reach it). On any
other address basic auth is required, given as ``user:pass`` (comma separated
for several users) and handed to Flower through its environment
(``FLOWER_BASIC_AUTH``), never on the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import config_path, load_config
from .errors import ConfigError

__all__ = ["FlowerCommand", "flower_command", "run_flower", "validate_basic_auth"]

# Flower's task list shows name, id and state by default; kwargs carry the job
# (kind, workflow, tier, trail), which is what an operator looks for.
TASKS_COLUMNS = "name,uuid,state,kwargs,result,received,started,runtime,worker,retries"
DEFAULT_MAX_TASKS = 10_000  # Flower keeps tasks in memory: bound it


def _is_loopback(address: str) -> bool:
    from .api.auth import is_loopback

    return is_loopback(address)


def validate_basic_auth(value: str) -> str:
    """``user:pass[,user2:pass2]``; the error never repeats the value."""
    pairs = [p.strip() for p in value.split(",") if p.strip()]
    if not pairs:
        raise ConfigError("basic auth is empty: give user:password")
    for i, p in enumerate(pairs, 1):
        user, sep, password = p.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"basic auth entry {i} is not user:password")
    return ",".join(pairs)


@dataclass(frozen=True)
class FlowerCommand:
    argv: list[str]
    env: dict[str, str]
    url: str
    authenticated: bool


def flower_command(
    config: str | os.PathLike[str] | None = None,
    *,
    port: int = 5555,
    address: str = "127.0.0.1",
    basic_auth: str | None = None,
    max_tasks: int = DEFAULT_MAX_TASKS,
    environ: Mapping[str, str] | None = None,
) -> FlowerCommand:
    """The command line and environment that start Flower for this fleet."""
    path = Path(config_path(config)).resolve()
    load_config(path)  # fail here, with a clear message, rather than inside Flower
    env = dict(os.environ if environ is None else environ)
    env["TIERFLEET_CONFIG"] = str(path)
    # Whatever the caller's shell says, access is decided below and nowhere else.
    for var in ("FLOWER_UNAUTHENTICATED_API", "FLOWER_BASIC_AUTH", "FLOWER_AUTH"):
        env.pop(var, None)
    if basic_auth:
        env["FLOWER_BASIC_AUTH"] = validate_basic_auth(basic_auth)
    elif _is_loopback(address):
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        raise ConfigError(
            f"Flower on {address} (not loopback) needs --basic-auth user:password "
            "(or TIERFLEET_FLOWER_BASIC_AUTH): its API can revoke tasks and stop workers"
        )
    argv = [
        sys.executable, "-m", "celery", "-A", "tierfleet.worker", "flower",
        f"--port={port}", f"--address={address}", f"--max_tasks={max_tasks}",
        f"--tasks_columns={TASKS_COLUMNS}",
    ]
    host = f"[{address}]" if ":" in address else address
    return FlowerCommand(argv=argv, env=env, url=f"http://{host}:{port}",
                         authenticated=bool(basic_auth))


def run_flower(cmd: FlowerCommand) -> int:
    """Become Flower (exec), so signals from systemd, Docker or Ctrl-C reach it directly.

    Where exec is not available, run it as a child and wait; returns its exit code.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(cmd.argv[0], cmd.argv, cmd.env)  # does not return
    proc = subprocess.Popen(cmd.argv, env=cmd.env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
