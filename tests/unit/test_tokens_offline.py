"""Token counting must work with no network: the encodings ship with the install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import socket
def refuse(*a, **k):
    raise OSError("network unreachable (test)")
socket.socket.connect = refuse
socket.create_connection = refuse
from tierfleet import tokens
n = tokens.count("Summarize this email thread in two sentences for the on-call lead.")
m = tokens.count("hello world", "cl100k_base")
print(n, m)
"""


def test_counting_works_with_the_network_unreachable(tmp_path: Path) -> None:
    env = {"TIERFLEET_CACHE_DIR": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    n, m = map(int, proc.stdout.split())
    assert 10 <= n <= 20
    assert m == 2  # "hello world" is two cl100k tokens
    assert any((tmp_path / "empty-cache" / "tiktoken").iterdir())
