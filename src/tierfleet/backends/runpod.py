"""Runpod Serverless (queue endpoints): ``/run``, then ``/status/{id}`` until a final state.

``host.url`` is the endpoint's base, ``https://api.runpod.ai/v2/<endpoint_id>``.
A Runpod *Pod* is just a server we rent: reach it with the ``openai`` kind.

The job we send is ``{"input": {...}}`` with this input, which the handler in
``deploy/runpod_handler.py`` reads::

    {
      "messages": [{"role": "system"|"user"|"assistant", "content": "...",
                    "images": ["<base64>", ...]}],     # images only when present
      "model": "qwen3-coder:30b",
      "json_output": false,
      "max_tokens": 512,            # left out when not set
      "temperature": 0.0            # left out when not set
    }

and the handler answers (the job's ``output``)::

    {"text": "...", "tokens_in": 123, "tokens_out": 45, "finish_reason": "stop", "model": "..."}

or, failing, ``{"error": "...", "error_type": "context_length_exceeded" | "bad_input" | ...}``
which Runpod reports as a FAILED job; ``error_type`` picks the error class.

Paying once: the Runpod job id is stored under our job id (``ExternalIdStore``)
*before* the first poll. A redelivered job (worker killed, visibility timeout)
finds the stored id and resumes polling instead of submitting again; a 404 for
the stored id means Runpod has expired it (results live 30 min), so we submit
anew. The id is kept after COMPLETED (a redelivery then reads the same result
back) and cleared after FAILED, TIMED_OUT, CANCELLED or our own cancel, so a
retry starts a fresh job. ``/runsync`` is not used: it only reveals the job id
when it returns, too late to store it before the wait.

Streaming (the request has ``on_token``): the same ``/run``, then ``GET /stream/{id}``
instead of ``/status/{id}``. Runpod answers ``{"status", "stream": [{"output": ...}]}``
with the pieces a generator handler yielded since the last call; each piece's text
(a string, ``{"text": "..."}``, or the vLLM worker's ``{"text": ["..."]}``) goes to
``on_token`` as it comes. Once the status is final, one ``/status`` call reads the
job's output (counts, finish_reason); a handler that does not stream simply yields
nothing, and the answer is read from that output as without streaming.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx

from ..config import HostConfig
from ._http import (
    DEFAULT_HEALTH_TIMEOUT_S,
    HttpBackend,
    error_from_message,
    health_timeouts,
    is_simulated,
    json_body,
    reported_count,
    scrub,
)
from .base import (
    BackendError,
    BadRequest,
    Completion,
    CompletionRequest,
    ContextTooLong,
    ExternalIdStore,
    HostDown,
    HostHealth,
    ModelNotFound,
    RateLimited,
)

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"})
# Consecutive failed polls tolerated before we call the API down; the job keeps
# its stored id, so coming back to this tier later still resumes it.
_MAX_POLL_FAILURES = 3
# The longest pause between two /stream polls: a token waits at most this long.
_STREAM_POLL_MAX_S = 0.25


def runpod_input(request: CompletionRequest) -> dict[str, Any]:
    """The job's ``input``. Only the fields the handler knows: it refuses unknown ones, so
    ``request.options`` stay here and ``None`` values are left out."""
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.images:
            msg["images"] = list(m.images)
        messages.append(msg)
    payload: dict[str, Any] = {
        "messages": messages,
        "model": request.model,
        "json_output": request.json_output,
    }
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    return payload


class RunpodBackend(HttpBackend):
    kind = "runpod"

    def __init__(
        self,
        name: str,
        host: HostConfig,
        *,
        external_ids: ExternalIdStore | None = None,
        health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
        poll_initial_s: float = 0.1,
        poll_max_s: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(name, host, health_timeout_s=health_timeout_s, transport=transport)
        self.external_ids = external_ids
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        deadline = started + self.host.timeout_s
        runpod_id = self._stored(request.job_id)
        state: dict[str, Any] | None = None
        response: httpx.Response | None = None
        if runpod_id is not None:
            try:
                response, state = self._status(runpod_id)
            except ModelNotFound:
                # Expired at Runpod (past its result retention or TTL): nothing to resume.
                self._forget(request.job_id)
                runpod_id = None
        if runpod_id is None:
            response, state = self._submit(request)
            runpod_id = str(state["id"])
            if request.job_id and self.external_ids is not None:
                # Stored before any wait: a worker killed from here on leaves a resumable job.
                self.external_ids.set(request.job_id, runpod_id)
        assert state is not None and response is not None
        if request.on_token is not None:
            streamed = self._stream(runpod_id, state, deadline, request)
            if _state(streamed) in FINAL_STATES:
                # /stream says how it ended; the output with the counts is at /status.
                response, state = self._status(runpod_id)
            else:
                state = streamed
        response, state = self._wait(runpod_id, response, state, deadline, request.job_id)
        return self._finish(request, runpod_id, response, state, started)

    def _stored(self, job_id: str | None) -> str | None:
        if job_id is None or self.external_ids is None:
            return None
        return self.external_ids.get(job_id)

    def _forget(self, job_id: str | None) -> None:
        if job_id is not None and self.external_ids is not None:
            self.external_ids.clear(job_id)

    def _submit(self, request: CompletionRequest) -> tuple[httpx.Response, dict[str, Any]]:
        body = {
            "input": runpod_input(request),
            # Let Runpod stop a runaway worker too, not only our poller.
            "policy": {"executionTimeout": max(5000, int(self.host.timeout_s * 1000))},
        }
        response = self._request("POST", f"{self.base_url}/run", json_data=body)
        state = json_body(self.name, response)
        if not state.get("id"):
            raise HostDown(self.name, "/run answered without a job id")
        return response, state

    def _status(self, runpod_id: str) -> tuple[httpx.Response, dict[str, Any]]:
        response = self._request("GET", f"{self.base_url}/status/{runpod_id}")
        return response, json_body(self.name, response)

    def _wait(
        self,
        runpod_id: str,
        response: httpx.Response,
        state: dict[str, Any],
        deadline: float,
        job_id: str | None,
    ) -> tuple[httpx.Response, dict[str, Any]]:
        interval = self.poll_initial_s
        failures = 0
        while _state(state) not in FINAL_STATES:
            now = time.monotonic()
            if now >= deadline:
                self._cancel(runpod_id)
                self._forget(job_id)
                raise HostDown(
                    self.name,
                    f"Runpod job {runpod_id} not finished after {self.host.timeout_s:g}s "
                    f"(last state {_state(state)}); cancelled",
                )
            time.sleep(min(interval, deadline - now))
            interval = min(interval * 1.5, self.poll_max_s)
            try:
                response, state = self._status(runpod_id)
                failures = 0
            except RateLimited as exc:
                # /status has its own rate limit; waiting is cheaper than a second job.
                time.sleep(max(0.0, min(exc.retry_after or interval, deadline - time.monotonic())))
            except ModelNotFound:
                self._forget(job_id)
                raise HostDown(self.name, f"Runpod job {runpod_id} disappeared (404)") from None
            except HostDown:
                failures += 1
                if failures >= _MAX_POLL_FAILURES:
                    raise
        return response, state

    def _stream(self, runpod_id: str, state: dict[str, Any], deadline: float,
                request: CompletionRequest) -> dict[str, Any]:
        """Poll ``/stream/{id}`` until a final state, feeding each piece to ``on_token``.

        Returns the last answer; past the deadline it returns early and ``_wait``
        (which sees the deadline too) cancels the job."""
        assert request.on_token is not None
        interval = self.poll_initial_s
        failures = 0
        while _state(state) not in FINAL_STATES:
            now = time.monotonic()
            if now >= deadline:
                return state
            time.sleep(min(interval, deadline - now))
            try:
                response = self._request("GET", f"{self.base_url}/stream/{runpod_id}")
                state = json_body(self.name, response)
                failures = 0
            except RateLimited as exc:
                time.sleep(max(0.0, min(exc.retry_after or interval, deadline - time.monotonic())))
                continue
            except ModelNotFound:
                self._forget(request.job_id)
                raise HostDown(self.name, f"Runpod job {runpod_id} disappeared (404)") from None
            except HostDown:
                failures += 1
                if failures >= _MAX_POLL_FAILURES:
                    raise
                continue
            got = False
            for item in state.get("stream") or []:
                piece = _piece_text(item.get("output") if isinstance(item, dict) else item)
                if piece:
                    request.on_token(piece)
                    got = True
            # Tokens come at the model's pace: poll fast while they do, back off while queued.
            interval = self.poll_initial_s if got else min(interval * 1.5, _STREAM_POLL_MAX_S,
                                                           self.poll_max_s)
        return state

    def _cancel(self, runpod_id: str) -> None:
        # The job may already be gone; the timeout error raised next says what matters.
        with contextlib.suppress(BackendError):
            self._request(
                "POST",
                f"{self.base_url}/cancel/{runpod_id}",
                timeout=health_timeouts(self.host, max(self.health_timeout_s, 3.0)),
            )

    def _finish(
        self,
        request: CompletionRequest,
        runpod_id: str,
        response: httpx.Response,
        state: dict[str, Any],
        started: float,
    ) -> Completion:
        status = _state(state)
        output = state.get("output")
        if status != "COMPLETED":
            self._forget(request.job_id)
            if status == "FAILED":
                raise self._failure(runpod_id, state.get("error"), output)
            raise HostDown(self.name, f"Runpod job {runpod_id} ended {status}")
        text, tokens_in, tokens_out, reason, model = _parse_output(output)
        if text is None:
            # A handler that reports an error in a COMPLETED job: treat it as a failure.
            self._forget(request.job_id)
            raise self._failure(runpod_id, None, output)
        execution_ms = state.get("executionTime")
        return Completion(
            text=text,
            model=model or request.model,
            host=self.name,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_s=time.monotonic() - started,
            finish_reason=reason,
            simulated=is_simulated(response),
            external_id=runpod_id,
            billed_seconds=float(execution_ms) / 1000.0 if isinstance(execution_ms, int | float) else None,
        )

    def _failure(self, runpod_id: str, error: Any, output: Any) -> BackendError:
        """The class for a failed job, from the handler's ``error_type`` when it gave one."""
        detail = output if isinstance(output, dict) else {}
        message = _error_text(error) or _error_text(detail.get("error")) or "no error given"
        text = scrub(f"Runpod job {runpod_id} failed: {message}", self._key)
        error_type = str(detail.get("error_type") or "")
        status = detail.get("status") if isinstance(detail.get("status"), int) else None
        cls = _ERROR_TYPES.get(error_type)
        if cls is None and error_type.startswith("upstream"):
            cls = HostDown
        if cls is None:
            return error_from_message(self.name, text, self._key)
        if cls is RateLimited:
            return RateLimited(self.name, text)
        return cls(self.name, text, status=status)

    def health(self, model: str | None = None) -> HostHealth:
        """Up when ``/health`` answers. No worker up means *cold* (first job waits), not down."""
        started = time.monotonic()
        probed = self._probe(f"{self.base_url}/health")
        if isinstance(probed, HostHealth):
            return probed
        response, body = probed
        workers = {k: _int(v) for k, v in (body.get("workers") or {}).items()}
        jobs = {k: _int(v) for k, v in (body.get("jobs") or {}).items()}
        ready = workers.get("idle", 0) + workers.get("running", 0) + workers.get("ready", 0)
        load = {
            "workers": workers,
            "jobs": jobs,
            "in_queue": jobs.get("inQueue", 0),
            "in_progress": jobs.get("inProgress", 0),
            "cold": ready == 0,
        }
        return HostHealth(
            host=self.name,
            ok=True,
            latency_s=time.monotonic() - started,
            detail="cold: no worker up, the first job waits for a start" if ready == 0 else "",
            models=list(self.host.models),
            load=load,
            simulated=is_simulated(response),
        )


def _state(state: dict[str, Any]) -> str:
    status = str(state.get("status") or "IN_QUEUE").upper()
    # Some Runpod docs name the running phase RUNNING.
    return "IN_PROGRESS" if status == "RUNNING" else status


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0



def _parse_output(
    output: Any,
) -> tuple[str | None, int | None, int | None, str | None, str | None]:
    """(text, tokens_in, tokens_out, finish_reason, model) from our handler's output.

    Also reads a plain string, and the OpenAI-shaped answer (or a list of them) that
    Runpod's vLLM worker returns, so a stock worker works too.
    """
    if isinstance(output, list) and len(output) > 1 and all(isinstance(o, dict) for o in output):
        # A generator handler's aggregate stream: the pieces in order, counts in the last ones.
        parsed = [_parse_output(o) for o in output]
        texts = [_piece_text(o) for o in output]
        def last(i: int) -> Any:
            return next((p[i] for p in reversed(parsed) if p[i] is not None), None)
        return "".join(texts), last(1), last(2), last(3), last(4)
    if isinstance(output, list) and output:
        return _parse_output(output[0])
    if isinstance(output, str):
        return output, None, None, None, None
    if not isinstance(output, dict) or "error" in output:
        return None, None, None, None, None
    if "text" in output:
        return (
            str(output.get("text") or ""),
            reported_count(output.get("tokens_in")),
            reported_count(output.get("tokens_out")),
            output.get("finish_reason"),
            output.get("model"),
        )
    choices = output.get("choices")
    if isinstance(choices, list) and choices:
        choice = choices[0] if isinstance(choices[0], dict) else {}
        usage = output.get("usage") or {}
        message = choice.get("message") or {}
        text = message.get("content")
        if text is None:
            tokens = choice.get("tokens")
            text = "".join(tokens) if isinstance(tokens, list) else choice.get("text")
        return (
            str(text or ""),
            reported_count(usage.get("prompt_tokens") or usage.get("input")),
            reported_count(usage.get("completion_tokens") or usage.get("output")),
            choice.get("finish_reason"),
            output.get("model"),
        )
    return None, None, None, None, None


def _piece_text(output: Any) -> str:
    """The text of one streamed piece: a string, ``{"text": str | [str, ...]}``, or an
    OpenAI-shaped chunk (``choices[0].delta.content``, ``.text`` or ``.tokens``)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, dict):
        return ""
    text = output.get("text")
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return "".join(str(t) for t in text)
    choices = output.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta") or {}
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return delta["content"]
        tokens = choice.get("tokens")
        if isinstance(tokens, list):
            return "".join(str(t) for t in tokens)
        if isinstance(choice.get("text"), str):
            return choice["text"]
    return ""


def _error_text(error: Any) -> str:
    """Runpod's ``error``: a message, or (for a raised exception) a JSON string of details."""
    if not error:
        return ""
    if isinstance(error, str) and error.lstrip().startswith("{"):
        try:
            error = json.loads(error)
        except json.JSONDecodeError:
            return error
    if isinstance(error, dict):
        return str(error.get("error_message") or error.get("message") or json.dumps(error))
    return str(error)


# error_type values of deploy/runpod_handler.py and what the worker should do with them.
_ERROR_TYPES: dict[str, type[BackendError]] = {
    "context_length_exceeded": ContextTooLong,
    "bad_input": BadRequest,
    "bad_request": BadRequest,
    "model_not_found": ModelNotFound,
    "rate_limited": RateLimited,
    "bad_upstream_response": HostDown,
}


__all__ = ["FINAL_STATES", "RunpodBackend", "runpod_input"]
