"""``stream: true`` on the chat endpoint: the job's tokens relayed as OpenAI SSE chunks.

The worker writes the host's tokens to the job's Redis Stream (:mod:`tierfleet.streams`,
which also defines what a fallback mid-stream does); this module reads it and sends
``chat.completion.chunk`` events: deltas as they come, then a chunk with the
``finish_reason`` of the stored Result, then ``usage`` when
``stream_options.include_usage`` asked for it, then ``[DONE]``.

Nothing is sent before the first token (or the final answer): until then a failure
is still an ordinary HTTP error (502, 503, 504 with the job id), as without
streaming. A job answered without tokens (the answer cache, a finished job asked
again, a tool call) is sent as one delta. After tokens were sent, a second attempt
(fallback, escalation) or a failure ends the stream with an ``error`` event, which
the OpenAI SDK raises as ``APIError``.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread
import redis
from starlette.requests import Request

from ..dispatch import Dispatcher
from ..jobs import TERMINAL, Result, Status
from ..streams import stream_key
from .errors import ApiError

__all__ = ["relay"]

# Threads for streams waiting on their job's Redis Stream (a blocking XREAD each), apart
# from the server's pool: streams past this many wait their turn, other requests never.
STREAM_THREADS = 64
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary())


def _stream_threads() -> anyio.CapacityLimiter:
    """The streams' thread limiter of the running event loop (one per loop: a limiter
    belongs to the loop it was made in)."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(STREAM_THREADS)
    return limiter


def _event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def relay(request: Request, d: Dispatcher, job_id: str, *, model: str, limit_s: float,
                include_usage: bool,
                failure: Callable[[Result], ApiError]) -> AsyncIterator[str]:
    """SSE events for ``job_id`` (see the module doc). Raises ApiError only before its
    first event, so the caller can still answer with an HTTP error."""
    cfg = d.config
    key = stream_key(cfg, job_id)
    base = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}
    deadline = time.monotonic() + limit_s
    last = "0-0"
    attempts = 0
    streamed = False  # tokens of the current attempt were sent
    sent = False  # anything was sent: HTTP errors are no longer possible

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _event({**base, "choices": [{"index": 0, "delta": delta,
                                            "finish_reason": finish}]})

    def error(message: str, code: str) -> str:
        return _event({"error": {"message": message, "type": "api_error", "code": code,
                                 "param": None, "job_id": job_id}})

    def look() -> tuple[Result | None, list[tuple[str, dict[str, str]]]]:
        """The stored result, then what the stream holds after ``last``: at once when the
        result is final (every token is in the stream by then), else waiting up to 250 ms
        for the next token, so a token goes out the moment the worker writes it."""
        res = d.results.get(job_id)
        final = res is not None and res.status in TERMINAL
        try:
            got = d.r.xread({key: last}, count=500, block=None if final else 250)
        except redis.RedisError:
            return res, []
        return res, [(str(i), f) for _, entries in got or [] for i, f in entries]

    while True:
        # In the streams' own threads: sixty clients waiting for their first token hold
        # sixty threads there, and none of those every other request runs in.
        res, events = await anyio.to_thread.run_sync(look, limiter=_stream_threads())
        final = res is not None and res.status in TERMINAL
        for event_id, fields in events:
            last = event_id
            kind = fields.get("t")
            if kind == "attempt":
                attempts += 1
                if streamed:
                    yield error(f"job {job_id} moved to another attempt after it had streamed "
                                f"(to {fields.get('tier')}); its answer will be at "
                                f"GET /v1/jobs/{job_id}", "stream_interrupted")
                    yield _event("[DONE]")
                    return
            elif kind == "delta":
                text = fields.get("text", "")
                yield chunk({"role": "assistant", "content": text} if not sent
                            else {"content": text})
                streamed = sent = True
        if final and not events:
            assert res is not None
            if res.status is not Status.SUCCEEDED:
                if not sent:
                    raise failure(res)
                yield error(f"job {job_id} failed after it had streamed: {res.error}",
                            "job_failed")
                yield _event("[DONE]")
                return
            if not sent:
                # No tokens came (a cached or stored answer, a tool call): send it whole.
                delta: dict[str, Any] = {"role": "assistant", "content": res.text or ""}
                if res.tool_calls:
                    delta = {"role": "assistant", "content": None, "tool_calls": [
                        {"index": i, **c} for i, c in enumerate(res.tool_calls)]}
                yield chunk(delta)
            base["model"] = res.served_model or res.model or model
            reason = "tool_calls" if res.tool_calls else (res.finish_reason or "stop")
            yield chunk({}, reason)
            if include_usage:
                yield _event({**base, "choices": [], "usage": {
                    "prompt_tokens": res.tokens_in, "completion_tokens": res.tokens_out,
                    "total_tokens": res.tokens_in + res.tokens_out}})
            yield _event("[DONE]")
            return
        if time.monotonic() > deadline:
            if not sent:
                raise ApiError(504, f"job {job_id} not finished after {limit_s:g}s; poll "
                               f"GET /v1/jobs/{job_id}", code="timeout", job_id=job_id,
                               headers={"x-tierfleet-job-id": job_id})
            yield error(f"job {job_id} not finished after {limit_s:g}s", "timeout")
            return
        if await request.is_disconnected():
            # Before the first token too: a client that hung up while the job queued would
            # otherwise be waited for until limit_s (600 s).
            return


async def primed(events: AsyncIterator[str]) -> tuple[str | None, AsyncIterator[str]]:
    """The first event (raising the relay's HTTP error, if any) and the whole stream.
    No first event: the client hung up before it, and the stream is empty."""
    first = await anext(events, None)

    async def rest() -> AsyncIterator[str]:
        if first is None:
            return
        yield first
        async for e in events:
            yield e

    return first, rest()


