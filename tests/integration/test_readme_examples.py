"""The README's "OpenAI SDK" examples, run exactly as written against the demo's fleet.

``tierfleet demo --keep`` (simulated hosts, latencies x 0.01) runs its day of jobs, then
keeps the fleet up and starts the API; the examples read ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` from the ``api.env`` it writes, as a reader who sourced it would.
Each block marked ``<!-- sdk-example: NAME -->`` runs in its own Python process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- sdk-example: (\w+) -->\n```python\n(.*?)\n```", re.S)


def examples() -> dict[str, str]:
    return dict(MARKED.findall((ROOT / "README.md").read_text()))


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("readme-demo")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TIERFLEET_CONFIG", "TIERFLEET_REDIS_URL", "OPENAI_BASE_URL",
                        "OPENAI_API_KEY")}
    log = (folder / "demo.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierfleet", "demo", "--keep", "--no-real-model", "--scale", "0.01",
         "--folder", str(folder)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder,
        start_new_session=True)
    api_env = folder / "api.env"
    try:
        deadline = time.monotonic() + 400
        while not api_env.exists():
            assert proc.poll() is None, (folder / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (folder / "demo.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(0.2)  # written in one go; let the writer close it
        found = dict(re.findall(r"export (\w+)=(\S+)", api_env.read_text()))
        assert set(found) == {"OPENAI_BASE_URL", "OPENAI_API_KEY"}
        shown = (folder / "demo.log").read_text()
        assert found["OPENAI_BASE_URL"] in shown  # the demo printed the URL it serves
        yield {**env, **found}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does: the demo stops its fleet
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def run(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_readme_has_the_three_examples() -> None:
    assert sorted(examples()) == ["parse", "stream", "tools"]


def test_stream_example(demo_env: dict[str, str]) -> None:
    out = run(examples()["stream"], demo_env)
    assert "[simulated " in out and out.strip()


def test_tools_example(demo_env: dict[str, str]) -> None:
    lines = run(examples()["tools"], demo_env).splitlines()
    assert lines[0].startswith("get_weather {'city': ")
    assert "3 degrees and snow" in lines[1]


def test_parse_example(demo_env: dict[str, str]) -> None:
    lines = run(examples()["parse"], demo_env).splitlines()
    assert lines[0].startswith("city=") and "sights=[" in lines[0]
    assert lines[1].startswith("answered by ")
