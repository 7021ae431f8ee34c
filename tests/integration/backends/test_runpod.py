"""The Runpod Serverless client against the simulated Runpod API.

Covers the job walk IN_QUEUE -> IN_PROGRESS -> COMPLETED, FAILED, TIMED_OUT, our own
timeout (cancel), and paying once: a redelivered job resumes the same Runpod job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.sim_fixtures import RUNPOD_KEY_ENV
from tierfleet.backends import (
    AuthError,
    ChatMessage,
    CompletionRequest,
    ContextTooLong,
    HostDown,
    MemoryExternalIds,
    ModelNotFound,
    RateLimited,
    RunpodBackend,
    make_backend,
)
from tierfleet.lab.sim import SimFleet

HOST = "sim-runpod"
TIMEOUT_S = 4.0


@pytest.fixture
def ids() -> MemoryExternalIds:
    return MemoryExternalIds()


@pytest.fixture
def backend(sim: SimFleet, ids: MemoryExternalIds) -> Iterator[RunpodBackend]:
    sim.reset()
    sim.host(HOST).runpod_queue_s = 1.0
    b = RunpodBackend(HOST, sim.config.hosts[HOST], external_ids=ids, poll_initial_s=0.01, poll_max_s=0.05)
    yield b
    b.close()


def req(job_id: str | None = "job-1", text: str = "Refactor this function", **kw: object):
    return CompletionRequest(
        model="qwen3-coder:30b",
        messages=[ChatMessage(role="user", content=text)],
        job_id=job_id,
        **kw,
    )


def test_make_backend_builds_a_runpod_client(sim: SimFleet, ids: MemoryExternalIds) -> None:
    b = make_backend(HOST, sim.config.hosts[HOST], external_ids=ids)
    assert isinstance(b, RunpodBackend) and b.external_ids is ids
    b.close()


def test_walk_in_queue_in_progress_completed(
    backend: RunpodBackend, sim: SimFleet, ids: MemoryExternalIds
) -> None:
    sim.host(HOST).runpod_queue_s = 15  # x 0.01 scale: 0.15 s in the queue
    sim.fault(HOST, "slow", seconds=0.2, count=1)
    c = backend.complete(req(max_tokens=500))
    assert c.text.startswith("[simulated qwen3-coder:30b]") and c.simulated
    assert c.tokens_in and c.tokens_out and c.finish_reason == "stop"
    assert c.external_id and ids.get("job-1") == c.external_id
    assert c.billed_seconds is not None and c.billed_seconds >= 0.2
    job = sim.host(HOST).jobs[c.external_id]
    assert job.seen == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    sent = sim.requests(HOST)[-1]["body"]
    assert sent["input"]["messages"] == [{"role": "user", "content": "Refactor this function"}]
    assert sent["input"]["max_tokens"] == 500 and sent["input"]["json_output"] is False
    assert sent["policy"]["executionTimeout"] == 5000


def test_redelivery_resumes_the_same_runpod_job(
    sim: SimFleet, ids: MemoryExternalIds, backend: RunpodBackend
) -> None:
    class WorkerKilled(BaseException):
        pass

    class DiesAfterStoring(MemoryExternalIds):
        """The worker dies right after storing the Runpod id, before its first poll."""

        def set(self, job_id: str, external_id: str) -> None:
            ids.set(job_id, external_id)
            raise WorkerKilled

    sim.host(HOST).runpod_queue_s = 10
    first = RunpodBackend(HOST, sim.config.hosts[HOST], external_ids=DiesAfterStoring())
    with pytest.raises(WorkerKilled):
        first.complete(req("job-redelivered"))
    first.close()
    runpod_id = ids.get("job-redelivered")
    assert runpod_id is not None
    # The redelivered message lands on another worker sharing the same store.
    c = backend.complete(req("job-redelivered"))
    assert c.external_id == runpod_id
    assert sim.counters(HOST)["run"] == 1
    # Even a third delivery after completion reads the finished job back instead of paying again.
    again = backend.complete(req("job-redelivered"))
    assert again.external_id == runpod_id and again.text == c.text
    assert sim.counters(HOST)["run"] == 1


def test_expired_stored_id_submits_anew(
    backend: RunpodBackend, sim: SimFleet, ids: MemoryExternalIds
) -> None:
    c = backend.complete(req("job-old"))
    assert sim.expire_jobs(HOST) == 1  # past Runpod's retention: /status answers 404
    fresh = backend.complete(req("job-old"))
    assert fresh.external_id != c.external_id and ids.get("job-old") == fresh.external_id
    assert sim.counters(HOST)["run"] == 2


def test_failed_job(backend: RunpodBackend, sim: SimFleet, ids: MemoryExternalIds) -> None:
    sim.fault(HOST, "fail", count=1)
    with pytest.raises(HostDown, match="failed: model server error") as err:
        backend.complete(req("job-fail"))
    assert err.value.fallback
    assert ids.get("job-fail") is None  # a retry starts a fresh job


def test_failed_for_context_is_context_too_long(backend: RunpodBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "context", count=1)
    with pytest.raises(ContextTooLong, match="maximum context length"):
        backend.complete(req("job-ctx"))


def test_handler_error_types_pick_the_class(backend: RunpodBackend) -> None:
    r = req("job-model")
    r.model = "llama9:70b"  # the endpoint does not serve it: the handler says model_not_found
    with pytest.raises(ModelNotFound, match="llama9:70b") as err:
        backend.complete(r)
    assert err.value.fallback is False


def test_input_carries_only_what_the_handler_accepts(backend: RunpodBackend, sim: SimFleet) -> None:
    # The handler refuses unknown fields (extra="forbid"): options stay home, None is left out.
    c = backend.complete(req("job-opts", options={"top_k": 5}, temperature=None))
    assert c.text
    sent = sim.requests(HOST)[-1]["body"]["input"]
    assert set(sent) == {"messages", "model", "json_output"}


def test_timed_out_job(backend: RunpodBackend, sim: SimFleet, ids: MemoryExternalIds) -> None:
    sim.fault(HOST, "timed_out", count=1)
    with pytest.raises(HostDown, match="TIMED_OUT"):
        backend.complete(req("job-timeout"))
    assert ids.get("job-timeout") is None


def test_our_timeout_cancels_the_job(sim: SimFleet, ids: MemoryExternalIds) -> None:
    sim.reset()
    cfg = sim.config.hosts[HOST].model_copy(update={"timeout_s": 0.3})
    b = RunpodBackend(HOST, cfg, external_ids=ids, poll_initial_s=0.01, poll_max_s=0.05)
    sim.fault(HOST, "slow", seconds=5, count=1)
    with pytest.raises(HostDown, match="cancelled"):
        b.complete(req("job-slow"))
    b.close()
    assert sim.counters(HOST)["cancel"] == 1
    assert ids.get("job-slow") is None
    (job,) = sim.host(HOST).jobs.values()
    assert job.cancelled_at is not None


def test_rate_limited_run(backend: RunpodBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "rate_limit", retry_after=2, count=1)
    with pytest.raises(RateLimited) as err:
        backend.complete(req())
    assert err.value.retry_after == 2.0


def test_server_error_and_down(backend: RunpodBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "error", count=1)
    with pytest.raises(HostDown):
        backend.complete(req())
    sim.down(HOST)
    with pytest.raises(HostDown):
        backend.complete(req("job-2"))
    assert backend.health().ok is False
    sim.up(HOST)


def test_auth(sim: SimFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    sim.reset()
    monkeypatch.setenv(RUNPOD_KEY_ENV, "rp-client-copy")
    b = make_backend(HOST, sim.config.hosts[HOST])
    monkeypatch.setenv(RUNPOD_KEY_ENV, "rp-what-the-sim-expects")
    with pytest.raises(AuthError) as err:
        b.complete(req())
    assert "rp-client-copy" not in str(err.value) and err.value.status == 401
    assert b.health().ok is False
    b.close()


def test_unknown_endpoint_is_a_configuration_error(sim: SimFleet) -> None:
    host = sim.config.hosts[HOST]
    wrong = host.model_copy(update={"url": host.url.rsplit("/", 1)[0] + "/no-such-endpoint"})
    b = make_backend(HOST, wrong)
    with pytest.raises(ModelNotFound):
        b.complete(req())
    b.close()


def test_health_load_and_cold(backend: RunpodBackend, sim: SimFleet) -> None:
    h = backend.health()
    assert h.ok and h.simulated and h.load["cold"] is False
    assert h.load["workers"] == {"idle": 2, "running": 0}
    sim.host(HOST).runpod_queue_s = 1000  # jobs stay queued
    for i in range(3):
        backend._submit(req(f"queued-{i}"))
    h = backend.health()
    assert h.load["in_queue"] == 3
    sim.fault(HOST, "cold")
    cold = backend.health()
    assert cold.ok is True and cold.load["cold"] is True and "cold" in cold.detail


def test_a_streamed_job_reads_its_pieces_from_stream(
    backend: RunpodBackend, sim: SimFleet, ids: MemoryExternalIds
) -> None:
    """``/stream/{id}`` hands out the tokens as the simulated worker makes them: they come
    over several polls, in order, and add up to the job's answer."""
    host = sim.host(HOST)
    scale = host.scale
    host.scale = 0.3  # tokens a few ms apart, so several polls bring some
    host.runpod_queue_s = 0.2
    got: list[tuple[float, str]] = []
    try:
        c = backend.complete(req(max_tokens=40, on_token=lambda p: got.append((time.monotonic(), p))))
    finally:
        host.scale = scale
    assert "".join(p for _, p in got) == c.text and c.text.startswith("[simulated qwen3-coder:30b]")
    assert len(got) > 5 and len({t for t, _ in got}) > 2  # token by token, over several polls
    assert c.tokens_out and c.finish_reason in ("stop", "length") and c.external_id
    assert ids.get("job-1") == c.external_id
    counts = sim.counters(HOST)
    assert counts.get("stream", 0) > 2 and counts.get("status", 0) == 1
    assert host.jobs[c.external_id].streamed == len(got)
