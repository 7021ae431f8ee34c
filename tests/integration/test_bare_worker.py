"""The card's command, ``celery -A tierfleet.worker worker -Q TIER`` with nothing else,
runs the tier's configured concurrency under the node name ``TIER@host``, so two tiers
started that way on one machine keep apart (two heartbeat keys, two Flower workers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.support.harness import RULES_ONLY, write_config
from tierfleet.config import load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.heartbeats import heartbeat_key

# The harness's rules-only fleet, with concurrencies that differ from Celery's default.
TIERS = (RULES_ONLY
         .replace('place = "rules"\n', 'place = "rules"\nconcurrency = 3\n', 1)
         .replace('place = "local"\n', 'place = "local"\nconcurrency = 2\n', 1))


def _bare(args: list[str], cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TIERFLEET_CONFIG": str(cfg), "PYTHONUNBUFFERED": "1"}
    env.pop("TIERFLEET_REDIS_URL", None)
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "tierfleet.worker",
                                 "worker", *args], env=env, cwd=cfg.parent, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _beat(client: redis.Redis, key: str, proc: subprocess.Popen[bytes], log: Path) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        raw = client.get(key)
        if raw:
            return json.loads(raw)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no heartbeat at {key}: {log.read_text()[-3000:]}")


def _pool_children(pid: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return len(out.stdout.split())


@pytest.mark.integration
def test_bare_celery_command_uses_the_tiers_concurrency_and_name(
        tmp_path: Path, redis_url: str, rclient: redis.Redis) -> None:
    cfg_path = write_config(tmp_path / "fleet.toml", redis_url, TIERS)
    config = load_config(cfg_path)
    host = socket.gethostname()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rules = _bare(["-Q", "rules"], cfg_path, tmp_path / "rules.log")
        mac = _bare(["-Q", "local-mac"], cfg_path, tmp_path / "mac.log")
        # -c and -n given: they win over the tier's defaults.
        given = _bare(["-Q", "rules", "-c", "1", "-n", "mine@%h"], cfg_path,
                      tmp_path / "given.log")
        procs = [rules, mac, given]
        r = _beat(rclient, heartbeat_key(config, f"rules@{host}"), rules, tmp_path / "rules.log")
        m = _beat(rclient, heartbeat_key(config, f"local-mac@{host}"), mac, tmp_path / "mac.log")
        g = _beat(rclient, heartbeat_key(config, f"mine@{host}"), given, tmp_path / "given.log")
        assert (r["queues"], r["concurrency"], r["pid"]) == (["rules"], 3, rules.pid)
        assert (m["queues"], m["concurrency"], m["pid"]) == (["local-mac"], 2, mac.pid)
        assert (g["queues"], g["concurrency"]) == (["rules"], 1)
        assert not rclient.exists(heartbeat_key(config, f"celery@{host}"))
        assert (_pool_children(rules.pid), _pool_children(mac.pid)) == (3, 2)
        # The renamed node runs jobs and names itself on them.
        d = Dispatcher(config)
        h = d.submit({"kind": "dedupe", "input": {"items": ["a", "a"]}})
        assert d.result(h.id, timeout=60).ok
        banner = (tmp_path / "rules.log").read_text()  # Celery's start banner says the same
        assert f"rules@{host} v" in banner and "concurrency: 3 (prefork)" in banner
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
