"""Runpod Serverless's wire format, simulated:
``/v2/{endpoint}/run|runsync|status/{id}|stream/{id}|cancel/{id}|health``.

A job walks IN_QUEUE -> IN_PROGRESS -> COMPLETED (or FAILED / TIMED_OUT /
CANCELLED) on the host's clock; failures have the shape
``deploy/runpod_handler.py`` gives them, and its input fields are the only
ones accepted.

``GET /stream/{id}`` is a generator handler's view: ``{"id", "status", "stream":
[{"output": {"text": piece}}, ...]}`` with the pieces made since the last call (each
is handed out once, as Runpod does), token by token at the model's speed while the
job is IN_PROGRESS; the job's ``/status`` output stays the whole answer.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .answers import compose, pieces, prompt_tokens
from .wire import Exchange, HttpError, ModelInfo, Route

# The job input deploy/runpod_handler.py accepts; it refuses anything else.
RUNPOD_INPUT_FIELDS = frozenset({"messages", "model", "max_tokens", "json_output", "temperature"})


@dataclass
class RunpodJob:
    id: str
    submitted: float
    queue_s: float
    exec_s: float
    outcome: str  # COMPLETED, FAILED or TIMED_OUT
    output: dict[str, Any] | None = None
    error: str | None = None
    cancelled_at: float | None = None
    seen: list[str] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # the answer's tokens, for /stream
    per_token_s: float = 0.0
    streamed: int = 0  # pieces already handed out by /stream

    def made(self, now: float) -> int:
        """How many pieces the model has produced by ``now``: none before the first
        token's time, then one per ``per_token_s``, all once the job is done."""
        status = self.status(now)
        if status == "COMPLETED":
            return len(self.pieces)
        if status != "IN_PROGRESS" or not self.pieces:
            return 0
        started = self.submitted + self.queue_s
        first = started + max(0.0, self.exec_s - self.per_token_s * len(self.pieces))
        if now < first:
            return 0
        if self.per_token_s <= 0:
            return len(self.pieces)
        return min(len(self.pieces), 1 + int((now - first) / self.per_token_s))

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "CANCELLED"
        if now < self.submitted + self.queue_s:
            return "IN_QUEUE"
        if self.outcome == "TIMED_OUT":
            return "TIMED_OUT"  # expired before a worker took it
        if now < self.submitted + self.queue_s + self.exec_s:
            return "IN_PROGRESS"
        return self.outcome

    def view(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        body: dict[str, Any] = {"id": self.id, "status": status}
        if status != "IN_QUEUE":
            body["delayTime"] = int(self.queue_s * 1000)
        if status == "IN_PROGRESS":
            body["workerId"] = "sim-worker-1"
        if status in ("COMPLETED", "FAILED"):
            body["executionTime"] = int(self.exec_s * 1000)
            body["workerId"] = "sim-worker-1"
        if status == "COMPLETED":
            body["output"] = self.output
        if status == "FAILED":
            body["error"] = self.error
            if self.output is not None:
                body["output"] = self.output
        return body


def new_job(ex: Exchange, body: Any) -> RunpodJob:
    host = ex.host
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        raise HttpError(400, "request body must be a JSON object with an 'input' object")
    inp = body["input"]
    job_id = f"{uuid.uuid4()}-u1"
    now = time.monotonic()
    queue_s = host.runpod_queue_s * host.scale
    cold = host.peek("cold")
    if cold is not None:
        queue_s += cold.seconds
    messages = inp.get("messages")
    name = str(inp.get("model") or next(iter(host.models), "model"))
    model = host.find_model(name) or ModelInfo(name)

    def failed(error_type: str, message: str, exec_s: float = 0.05) -> RunpodJob:
        # The shape of deploy/runpod_handler.py's failures, as Runpod reports them.
        out = {"error_type": error_type, "status": None}
        return RunpodJob(job_id, now, queue_s, exec_s * host.scale, "FAILED", out, message)

    unknown = sorted(set(inp) - RUNPOD_INPUT_FIELDS)
    if unknown:
        return failed("bad_input", f"unknown input fields: {', '.join(unknown)}")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return failed("bad_input", "messages: a non-empty list is required")
    if host.find_model(name) is None:
        return failed("model_not_found", f"The model `{name}` does not exist.")
    if host.take("timed_out", "run") is not None:
        return RunpodJob(job_id, now, queue_s, 0.0, "TIMED_OUT")
    if host.take("fail", "run") is not None:
        return failed("upstream_error", "model server error 500 (simulated)", 0.1)
    n_in = prompt_tokens(messages)
    if host.take("context", "run") is not None or n_in > model.context_window:
        return failed(
            "context_length_exceeded",
            f"This model's maximum context length is {model.context_window} tokens. "
            f"However, your messages resulted in {n_in} tokens.",
        )
    limit = inp.get("max_tokens")
    answer = compose(
        model.name,
        messages,
        json_output=bool(inp.get("json_output")),
        max_tokens=int(limit) if isinstance(limit, int) and limit > 0 else None,
        vision=model.vision,
        scale=host.scale,
    )
    slow = host.take("slow", "run")
    exec_s = answer.latency_s + (slow.seconds if slow is not None else 0.0)
    output = {
        "text": answer.text,
        "tokens_in": answer.tokens_in,
        "tokens_out": answer.tokens_out,
        "finish_reason": answer.finish_reason,
        "model": model.name,
    }
    # The clock starts once the answer is composed, so the walk is the same on a cold process.
    return RunpodJob(job_id, time.monotonic(), queue_s, exec_s, "COMPLETED", output=output,
                     pieces=pieces(answer.text), per_token_s=answer.per_token_s)


def run(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    job = new_job(ex, body)
    with host._lock:
        host.jobs[job.id] = job
    ex.send(200, {"id": job.id, "status": "IN_QUEUE"})


def runsync(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    job = new_job(ex, body)
    job.id = "sync-" + job.id
    with host._lock:
        host.jobs[job.id] = job
    try:
        wait_s = min(max(int(query.get("wait", ["90000"])[0]), 1000), 300_000) / 1000.0
    except ValueError:
        raise HttpError(400, "wait must be milliseconds (1000-300000)") from None
    end = time.monotonic() + wait_s
    while job.status(time.monotonic()) not in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"):
        left = end - time.monotonic()
        if left <= 0:
            break
        ex.sleep(min(0.02, left))
    ex.send(200, job.view(time.monotonic()))


def _job(ex: Exchange, job_id: str | None) -> RunpodJob:
    host = ex.host
    with host._lock:
        job = host.jobs.get(job_id or "")
    if job is None:
        raise HttpError(404, f"job {job_id} not found")
    return job


def status(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    job = _job(ex, job_id)
    view = job.view(time.monotonic())
    with ex.host._lock:
        if not job.seen or job.seen[-1] != view["status"]:
            job.seen.append(view["status"])
    ex.send(200, view)


def stream(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    job = _job(ex, job_id)
    now = time.monotonic()
    view = job.view(now)
    with ex.host._lock:
        upto = job.made(now)
        fresh = job.pieces[job.streamed:upto]
        job.streamed = max(job.streamed, upto)
    answer: dict[str, Any] = {"id": job.id, "status": view["status"],
                              "stream": [{"output": {"text": p}} for p in fresh]}
    if "error" in view:
        answer["error"] = view["error"]
    ex.send(200, answer)


def cancel(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    job = _job(ex, job_id)
    now = time.monotonic()
    if job.status(now) in ("IN_QUEUE", "IN_PROGRESS"):
        job.cancelled_at = now
    ex.send(200, {"id": job.id, "status": job.status(now)})


def health(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    now = time.monotonic()
    with host._lock:
        states = Counter(j.status(now) for j in host.jobs.values())
    workers = 0 if host.peek("cold") is not None else host.runpod_workers
    running = min(states["IN_PROGRESS"], workers)
    ex.send(
        200,
        {
            "jobs": {
                "completed": states["COMPLETED"],
                "failed": states["FAILED"] + states["TIMED_OUT"],
                "inProgress": states["IN_PROGRESS"],
                "inQueue": states["IN_QUEUE"],
                "retried": 0,
            },
            "workers": {"idle": max(workers - running, 0), "running": running},
        },
    )


# operation -> (method, answer, whether the path carries a job id)
OPERATIONS: dict[str, tuple[str, Route, bool]] = {
    "run": ("POST", run, False),
    "runsync": ("POST", runsync, False),
    "health": ("GET", health, False),
    "status": ("GET", status, True),
    "stream": ("GET", stream, True),
    "cancel": ("POST", cancel, True),
}
