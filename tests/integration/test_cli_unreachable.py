"""Every CLI command against a Redis that takes the connection and never answers (a hung
server, a port forwarded to nothing): one line naming the Redis, a non-zero exit, no
traceback, within seconds. The store clients' own timeouts (30 s, retried) are for
services; before, `status` sat 125 s and then printed a TimeoutError traceback, and
`budget show` a traceback after 10 s."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import cli, write_config

COMMANDS = [
    ["status"], ["status", "--json"], ["result", "abc"], ["result", "abc", "--timeout", "5"],
    ["dlq", "list", "--json"], ["dlq", "replay", "abc"], ["dlq", "replay", "--all"],
    ["report", "--json"], ["budget", "show"], ["budget", "set", "b", "--limit-usd", "1"],
    ["feedback", "abc", "--good"], ["policy", "list"], ["policy", "rollback"],
    ["submit", "hello"], ["submit", "--kind", "dedupe", "--input", '{"items": ["a"]}', "--wait"],
]


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A listener that accepts every connection and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a)[:40])
def test_a_silent_redis_is_one_line_within_seconds(tmp_path: Path, silent_port: int,
                                                   args: list[str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{silent_port}/0"
    cfg = write_config(tmp_path / "fleet.toml", url)
    start = time.monotonic()
    out = cli(args, cfg, timeout=60)
    took = time.monotonic() - start
    err = out.stderr
    assert out.returncode != 0, (out.stdout, err)
    assert "Traceback" not in err and "╭" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert f"127.0.0.1:{silent_port}" in lines[0], lines[0]
    assert "hunter2" not in err, "the Redis password is printed"
    assert took < 20, f"{args} took {took:.1f} s to give up"
