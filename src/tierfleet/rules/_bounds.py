"""Hard run-time bounds of one rules job: CPU time, memory and output bytes.

The submit-time checks refuse what is plainly too big, but a 1.7 KB schema can
still ask for 2^24 checks and a list of 30,000 objects can still be slow to
compare, and no static check sees every such case. So every rules job runs under
bounds from ``[limits.rules]`` / ``[limits.rules.KIND]``:

``isolation = "fork"`` (the default where ``os.fork`` exists): the job runs in a
forked helper process. Per job, the helper sets ``RLIMIT_AS`` to its current size plus ``memory_mb``
(an allocation past it is a ``MemoryError``, or at worst kills the child), an
``ITIMER_PROF`` CPU timer at ``cpu_s`` that interrupts Python code, and
``RLIMIT_CPU`` one second later as the backstop for C code that never returns to
Python. The parent reads the JSON answer over a pipe, at most ``output_bytes`` of
it, under a wall-clock deadline, and always reaps the child. Whatever the job
does, the worker process itself spends only a pipe round trip, and is never the
one that blows up. The helper is forked once per worker process and reused
(see below); ``bench/rules_bound.py`` measures the per-job cost.

``isolation = "inline"``: the job runs in the calling process; on the main thread
an ``ITIMER_PROF`` timer bounds its CPU time, elsewhere only the executors' own
bounded loops and regex timeouts do; memory is not bounded. For platforms
without fork, or when the per-job fork is not wanted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..config import ResolvedBounds
from ._common import RuleFailed


class CpuLimit(BaseException):
    """Raised from the CPU timer's signal handler. A BaseException so that the
    executors' ``except Exception`` (which turns bugs into RuleFailed) cannot swallow it."""


def _cpu_message(b: ResolvedBounds) -> str:
    return f"over the CPU time limit: limits.rules.cpu_s = {b.cpu_s:g}s for {b.kind}"


def _memory_message(b: ResolvedBounds) -> str:
    return f"over the memory limit: limits.rules.memory_mb = {b.memory_mb} MB for {b.kind}"


def _output_message(b: ResolvedBounds, size: str) -> str:
    return (
        f"output is {size} bytes, over the output limit: "
        f"limits.rules.output_bytes = {b.output_bytes:,} for {b.kind}"
    )


def encode_output(out: dict[str, Any], b: ResolvedBounds) -> bytes:
    """The output as strict JSON bytes, or RuleFailed when it is over ``output_bytes``."""
    data = json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    if len(data) > b.output_bytes:
        raise RuleFailed(_output_message(b, f"{len(data):,}"))
    return data


@contextlib.contextmanager
def _cpu_timer(seconds: float) -> Iterator[None]:
    """CPU-time alarm on this (main) thread, restoring what was there before.

    The alarm repeats every 50 ms once due, and the job counts as over even if it
    returns: C code that checks signals (the ``regex`` engine does) may swallow the
    first CpuLimit, so one shot is not enough.
    """
    fired = False

    def on_alarm(signum: int, frame: Any) -> None:
        nonlocal fired
        fired = True
        raise CpuLimit

    previous = signal.signal(signal.SIGPROF, on_alarm)
    old_timer = signal.setitimer(signal.ITIMER_PROF, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        if old_timer[0] > 0:
            signal.setitimer(signal.ITIMER_PROF, *old_timer)
    if fired:
        raise CpuLimit


def run_inline(fn: Callable[[], dict[str, Any]], b: ResolvedBounds) -> dict[str, Any]:
    on_main = threading.current_thread() is threading.main_thread()
    try:
        if on_main:
            with _cpu_timer(b.cpu_s):
                out = fn()
        else:
            out = fn()
    except CpuLimit:
        raise RuleFailed(_cpu_message(b)) from None
    except MemoryError:
        raise RuleFailed(_memory_message(b)) from None
    encode_output(out, b)
    return out


# -- a forked helper process --------------------------------------------------------------
#
# Forking per job costs ~20 ms in a 150 MB worker on a small VM (the page tables are
# copied), more than the jobs themselves. So each worker process forks helpers once,
# lazily, and keeps them: a job is one pipe round trip (~0.3 ms). A helper that hit
# any limit, or did not answer in time, is killed and replaced on the next job, so
# whatever state a hostile job left behind dies with it.

_OK, _FAILED, _LIMIT = b"O", b"F", b"L"
_HEADER = struct.Struct("!Q")


def _address_space() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _close_inherited(keep: set[int]) -> None:
    """Close the worker's sockets and pipes in the helper: a copy held open here would
    keep a Redis connection or a pool pipe alive after the worker closed its own."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _set_soft(which: int, soft: int) -> None:
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))


JobFn = Callable[[str, Any, Any], dict[str, Any]]


def _serve(run: JobFn, config: Any, rfd: int, wfd: int) -> None:  # pragma: no cover - child
    """The helper's loop: one job per request frame; never returns (os._exit)."""
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGALRM, signal.SIGUSR1, signal.SIGHUP, signal.SIGXCPU):
            with contextlib.suppress(Exception):
                signal.signal(sig, signal.SIG_DFL)
        # The forking thread's signal mask is inherited: a pool thread that blocks signals
        # would leave SIGPROF (the CPU timer) and SIGXCPU (its backstop) never delivered.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        signal.setitimer(signal.ITIMER_REAL, 0)
        # No PR_SET_PDEATHSIG: it fires when the forking *thread* exits, which kills
        # helpers a thread pool hands between threads. A helper outlives its worker only
        # until it next reads its request pipe (EOF) or, mid-job, until RLIMIT_CPU.
        _close_inherited({rfd, wfd})
        while True:
            head = _read_exact(rfd, _HEADER.size)
            if head is None:
                break
            body = _read_exact(rfd, _HEADER.unpack(head)[0])
            if body is None:
                break
            # JSON only, even on a private pipe: nothing that crosses a process is code.
            msg = json.loads(body)
            kind, payload = msg["kind"], msg["payload"]
            if msg["config"] is not None:
                config = type(config).model_validate(msg["config"])
            b: ResolvedBounds = config.limits.rules.for_kind(kind)
            # Both limits are per job: from where this process stands now.
            _set_soft(resource.RLIMIT_AS, _address_space() + b.memory_mb * 1024 * 1024)
            used = resource.getrusage(resource.RUSAGE_SELF)
            _set_soft(resource.RLIMIT_CPU, math.ceil(used.ru_utime + used.ru_stime + b.cpu_s) + 1)
            try:
                with _cpu_timer(b.cpu_s):
                    out = run(kind, payload, config)
                frame = _OK + encode_output(out, b)
            except CpuLimit:
                frame = _LIMIT + _cpu_message(b).encode()
            except MemoryError:
                frame = _LIMIT + _memory_message(b).encode()
            except RuleFailed as exc:
                frame = _FAILED + exc.message.encode("utf-8", "backslashreplace")
            except Exception as exc:  # a bug: still an answer, never a hung worker
                frame = _FAILED + f"{b.kind} failed unexpectedly: {type(exc).__name__}".encode()
            _set_soft(resource.RLIMIT_AS, resource.RLIM_INFINITY)
            _set_soft(resource.RLIMIT_CPU, resource.RLIM_INFINITY)
            _write_frame(wfd, frame)
            if frame[:1] == _LIMIT:
                break  # a job that hit a limit may have left the heap in any state
    except BaseException:
        code = 3
    finally:
        os._exit(code)


class _Helper:
    def __init__(self, run: JobFn, config: Any) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            os.close(to_child_w)
            os.close(from_child_r)
            _serve(run, config, to_child_r, from_child_w)
        os.close(to_child_r)
        os.close(from_child_w)
        self.pid, self.w, self.r = pid, to_child_w, from_child_r
        self.config = config
        self.owner = os.getpid()

    def close(self, kill: bool = True) -> int | None:
        for fd in (self.w, self.r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:  # reaped by someone else's SIGCHLD handler
            return None

    def call(self, kind: str, payload: Any, config: Any, b: ResolvedBounds) -> tuple[bytes, bool]:
        """(answer frame, helper still usable); raises RuleFailed on a limit seen from here."""
        body = json.dumps({
            "kind": kind, "payload": payload,
            "config": None if config is self.config else config.model_dump(mode="json"),
        }, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
        self.config = config
        deadline = time.monotonic() + b.cpu_s * 3 + 5
        try:
            _write_frame(self.w, body)
            head = self._read(_HEADER.size, deadline, b)
            size = _HEADER.unpack(head)[0]
            if size > b.output_bytes + 4096:
                raise RuleFailed(_output_message(b, f"{size:,}"))
            frame = self._read(size, deadline, b)
        except (BrokenPipeError, EOFError):
            status = self.close(kill=False)
            if status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
                raise RuleFailed(_cpu_message(b)) from None
            # No answer and no CPU signal: nearly always an allocation past RLIMIT_AS in C code.
            raise RuleFailed(_memory_message(b) + " (the job's process died)") from None
        return frame, frame[:1] != _LIMIT

    def _read(self, n: int, deadline: float, b: ResolvedBounds) -> bytes:
        chunks: list[bytes] = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                # Wall clock as the parent's own bound: the helper's CPU timers cannot see
                # a job that is starved of CPU or blocked, so this allows for a shared core.
                self.close()
                raise RuleFailed(_cpu_message(b))
            ready, _, _ = select.select([self.r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.r, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)


class Sandbox:
    """Idle helpers of this process; a thread takes one (or forks a new one) per job."""

    def __init__(self, run: JobFn) -> None:
        self.run = run
        self._idle: list[_Helper] = []
        self._lock = threading.Lock()

    def _take(self, config: Any) -> _Helper:
        with self._lock:
            while self._idle:
                h = self._idle.pop()
                if h.owner == os.getpid():
                    return h
                # Inherited across a fork (a Celery pool child): not ours to talk to.
        return _Helper(self.run, config)

    def execute(self, kind: str, payload: Any, config: Any, b: ResolvedBounds) -> dict[str, Any]:
        helper = self._take(config)
        ok = False
        try:
            frame, ok = helper.call(kind, payload, config, b)
        finally:
            if ok:
                with self._lock:
                    self._idle.append(helper)
            else:
                helper.close()
        if frame[:1] == _OK:
            result: dict[str, Any] = json.loads(frame[1:])
            return result
        raise RuleFailed(frame[1:].decode("utf-8", "replace"))


def run_bounded(
    fn: Callable[[], dict[str, Any]], b: ResolvedBounds, sandbox: Sandbox | None = None,
    kind: str = "", payload: Any = None, config: Any = None,
) -> dict[str, Any]:
    """The job under ``b``; over any bound it is a RuleFailed naming the limit.

    With ``isolation = "fork"`` it runs as ``sandbox.run(kind, payload, config)`` in a
    helper process, else ``fn()`` inline.
    """
    if b.isolation == "fork" and sandbox is not None and hasattr(os, "fork"):
        return sandbox.execute(kind, payload, config, b)
    return run_inline(fn, b)
