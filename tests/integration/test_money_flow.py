"""Fault test: 200 jobs against a host limited to 60 requests per (scaled) minute."""

from __future__ import annotations

import bisect
import queue
import threading
import time

import pytest
import redis

from tierfleet.backends.base import Completion, CompletionRequest, RateLimited
from tierfleet.backends.stub import StubBackend
from tierfleet.config import FleetConfig, FlowConfig
from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind, Route, Status
from tierfleet.runner import Moved, Parked, Runner, Stored
from tierfleet.store import Parking

pytestmark = pytest.mark.integration

LIMIT, WINDOW = 60, 0.5  # 60 requests per "minute" of 0.5 s


class LimitedHost(StubBackend):
    """A rented GPU endpoint that enforces its own limit the way providers do: a 429 with
    Retry-After for a request beyond LIMIT in any WINDOW. Shared by every worker thread."""

    def __init__(self) -> None:
        super().__init__("runpod")
        self.lock = threading.Lock()
        self.seen: list[float] = []
        self.refused = 0

    def complete(self, request: CompletionRequest) -> Completion:
        with self.lock:
            now = time.monotonic()
            recent = len(self.seen) - bisect.bisect_right(self.seen, now - WINDOW)
            if recent >= LIMIT:
                self.refused += 1
                raise RateLimited(self.name, "rate limit exceeded", retry_after=WINDOW)
            self.seen.append(now)
        time.sleep(0.002)
        return Completion(text="ok", model=request.model, host=self.name, tokens_in=20, tokens_out=5,
                          latency_s=0.002, billed_seconds=0.002)


def max_in_any_window(times: list[float]) -> int:
    return max((bisect.bisect_left(times, t + WINDOW) - i for i, t in enumerate(times)), default=0)


def test_200_jobs_wait_out_a_60_per_minute_limit_and_none_is_billed_on_paid(
        core_config: FleetConfig, redis_url: str) -> None:
    core_config.flow = {"runpod-endpoint": FlowConfig(hosts=["runpod"], requests_per_minute=LIMIT,
                                                      window_s=WINDOW)}
    host = LimitedHost()
    work: queue.Queue[Delivery] = queue.Queue()
    moved: list[Moved] = []
    done: dict[str, Stored] = {}
    parks = 0
    lock = threading.Lock()
    stop = threading.Event()
    for i in range(200):
        job = Job(id=f"flow-{i}", prompt=f"Summarise log chunk {i}.", kind=Kind.CODE, cache=False)
        work.put(Delivery(job=job, route=Route(tier="runpod", kind=Kind.CODE, tokens_in=20,
                                               fallbacks=["paid"])))

    def worker() -> None:
        nonlocal parks
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        backends = {n: StubBackend(n, answers=["paid answer"]) for n in core_config.hosts} | {"runpod": host}
        runner = Runner(core_config, client, work.put, backend_for=backends.__getitem__)
        while not stop.is_set():
            try:
                d = work.get(timeout=0.05)
            except queue.Empty:
                continue
            out = runner.run(d)
            with lock:
                if isinstance(out, Stored):
                    done[d.job.id] = out
                elif isinstance(out, Moved):
                    moved.append(out)
                elif isinstance(out, Parked):
                    parks += 1

    def sweeper() -> None:  # the reaper's parking sweep
        parking = Parking(redis.Redis.from_url(redis_url, decode_responses=True), core_config)
        while not stop.is_set():
            for d in parking.take_due():
                work.put(d)
            time.sleep(0.02)

    threads = [threading.Thread(target=worker) for _ in range(4)] + [threading.Thread(target=sweeper)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(done) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=10)

    assert len(done) == 200 and all(s.result.status is Status.SUCCEEDED for s in done.values())
    assert {s.result.tier for s in done.values()} == {"runpod"}  # none billed on the paid tier
    assert moved == []
    assert parks > 0  # they did wait (parked with the time they needed)
    assert len(host.seen) == 200 and host.refused == 0
    assert max_in_any_window(host.seen) <= LIMIT
