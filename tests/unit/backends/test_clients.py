"""The three host clients over a scripted transport: what they send, what they read back,
and which error class each failure becomes (the class decides what the runner does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.unit.backends.conftest import KEY, MODELS, Backend, Wire, request_for
from tierfleet.backends import (
    SIMULATED_HEADER,
    AuthError,
    BackendError,
    BadRequest,
    ChatMessage,
    CompletionRequest,
    ContextTooLong,
    HostDown,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
)

PIXEL = "iVBORw0KGgoAAAANSUhEUg=="


def script_success(wire: Wire, kind: str, text: str, tokens_in: int, tokens_out: int) -> None:
    """The host's answer to one completion, in its own wire format."""
    if kind == "ollama":
        wire.json(200, {"model": MODELS[kind], "message": {"role": "assistant", "content": text},
                        "done": True, "done_reason": "stop", "prompt_eval_count": tokens_in,
                        "eval_count": tokens_out}, headers={SIMULATED_HEADER: "1"})
    elif kind == "openai":
        wire.json(200, {"id": "chatcmpl-1", "model": MODELS[kind], "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}},
            headers={SIMULATED_HEADER: "1"})
    else:
        wire.json(200, {"id": "rp-1", "status": "IN_QUEUE"})
        wire.json(200, {"id": "rp-1", "status": "IN_PROGRESS"})
        wire.json(200, {"id": "rp-1", "status": "COMPLETED", "executionTime": 2500,
                        "output": {"text": text, "tokens_in": tokens_in, "tokens_out": tokens_out,
                                   "finish_reason": "stop", "model": MODELS[kind]}},
                  headers={SIMULATED_HEADER: "1"})


def test_a_completion_reads_text_and_counts(backend: Backend, kind: str, wire: Wire) -> None:
    script_success(wire, kind, "two failures, then green", 42, 7)
    c = backend.complete(request_for(kind))
    assert (c.text, c.tokens_in, c.tokens_out, c.finish_reason) == ("two failures, then green", 42, 7, "stop")
    assert c.model == MODELS[kind] and c.host == kind and c.simulated is True


def test_absent_counts_stay_unknown(backend: Backend, kind: str, wire: Wire) -> None:
    # The caller estimates missing counts; a client must not report a made-up zero.
    if kind == "ollama":
        wire.json(200, {"model": MODELS[kind], "message": {"content": "hi"}, "done": True})
    elif kind == "openai":
        wire.json(200, {"model": MODELS[kind], "choices": [{"message": {"content": "hi"}}]})
    else:
        wire.json(200, {"id": "rp-2", "status": "COMPLETED", "output": "hi"})
    c = backend.complete(request_for(kind))
    assert c.text == "hi" and c.tokens_in is None and c.tokens_out is None


def test_ollama_request_shape(make_backend: Callable[..., Backend], wire: Wire) -> None:
    b = make_backend("ollama")
    script_success(wire, "ollama", "ok", 1, 1)
    b.complete(CompletionRequest(model="qwen3:4b", max_tokens=64, temperature=0.2, json_output=True,
                                 messages=[ChatMessage(role="user", content="what is it?",
                                                       images=[PIXEL])]))
    (sent,) = wire.requests
    assert (sent.method, str(sent.url)) == ("POST", "http://gpu.test:11434/api/chat")
    assert "authorization" not in sent.headers  # no key configured, none sent
    assert wire.body() == {
        "model": "qwen3:4b", "stream": False, "truncate": False, "format": "json",
        "messages": [{"role": "user", "content": "what is it?", "images": [PIXEL]}],
        "options": {"num_predict": 64, "temperature": 0.2},
    }


def test_openai_request_shape(make_backend: Callable[..., Backend], wire: Wire) -> None:
    b = make_backend("openai")
    script_success(wire, "openai", "ok", 1, 1)
    b.complete(CompletionRequest(model="gpt-test", max_tokens=64, json_output=True,
                                 options={"max_completion_tokens": 64, "seed": 3},
                                 messages=[ChatMessage(role="user", content="what is it?",
                                                       images=[PIXEL])]))
    (sent,) = wire.requests
    assert (sent.method, str(sent.url)) == ("POST", "https://api.provider.test/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    body = wire.body()
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}]
    assert body["response_format"] == {"type": "json_object"} and body["stream"] is False
    # Reasoning models refuse max_tokens next to max_completion_tokens.
    assert "max_tokens" not in body and body["max_completion_tokens"] == 64 and body["seed"] == 3


def test_runpod_request_shape_and_billing(make_backend: Callable[..., Backend], wire: Wire) -> None:
    b = make_backend("runpod")
    script_success(wire, "runpod", "ok", 3, 4)
    c = b.complete(request_for("runpod", max_tokens=32, options={"ignored_by_handler": 1}))
    run, *polls = wire.requests
    assert (run.method, str(run.url)) == ("POST", "https://api.runpod.test/v2/ep1/run")
    assert run.headers["authorization"] == f"Bearer {KEY}"
    assert [str(p.url) for p in polls] == ["https://api.runpod.test/v2/ep1/status/rp-1"] * 2
    # Only the handler's fields: it refuses unknown ones.
    assert wire.body(0)["input"] == {"messages": [{"role": "user", "content": request_for("runpod")
                                                   .messages[0].content}],
                                     "model": "coder:30b", "json_output": False, "max_tokens": 32,
                                     "temperature": 0.0}
    assert wire.body(0)["policy"] == {"executionTimeout": 5000}
    assert c.external_id == "rp-1" and c.billed_seconds == 2.5


# (kind, what the host says, the class it must become)
FAILURES: list[tuple[str, Any, type[BackendError]]] = [
    ("ollama", (404, {"error": "model 'qwen3:4b' not found"}), ModelNotFound),
    ("ollama", (400, {"error": "the input length exceeds the context length"}), ContextTooLong),
    ("ollama", (400, {"error": "invalid options"}), BadRequest),
    ("ollama", (500, {"error": "llama runner process has terminated"}), HostDown),
    ("ollama", (200, {"error": "model 'qwen3:4b' not found, try pulling it first"}), ModelNotFound),
    ("ollama", httpx.ConnectError("connection refused"), HostDown),
    ("openai", (429, {"error": {"message": "Rate limit reached", "type": "requests",
                                "code": "rate_limit_exceeded"}}), RateLimited),
    ("openai", (429, {"error": {"message": "You exceeded your current quota",
                                "type": "insufficient_quota", "code": "insufficient_quota"}}),
     QuotaExhausted),
    ("openai", (401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}),
     AuthError),
    ("openai", (404, {"error": {"message": "The model `gpt-test` does not exist",
                                "code": "model_not_found"}}), ModelNotFound),
    ("openai", (400, {"error": {"message": "maximum context length is 8192 tokens",
                                "code": "context_length_exceeded"}}), ContextTooLong),
    ("openai", (503, {"error": {"message": "overloaded"}}), HostDown),
    ("openai", (200, {"id": "x", "choices": []}), HostDown),
    ("openai", httpx.ReadTimeout("read timed out"), HostDown),
    ("runpod", (401, {"error": "Unauthorized"}), AuthError),
    ("runpod", (429, {"error": "too many requests"}), RateLimited),
    ("runpod", "FAILED:context_length_exceeded", ContextTooLong),
    ("runpod", "FAILED:bad_input", BadRequest),
    ("runpod", "FAILED:model_not_found", ModelNotFound),
    ("runpod", "FAILED:upstream_error", HostDown),
    ("runpod", "TIMED_OUT", HostDown),
]


@pytest.mark.parametrize(("kind", "failure", "cls"), FAILURES,
                         ids=[f"{k}-{c.__name__}-{i}" for i, (k, _, c) in enumerate(FAILURES)])
def test_each_failure_maps_to_its_class(make_backend: Callable[..., Backend], wire: Wire,
                                        kind: str, failure: Any, cls: type[BackendError]) -> None:
    b = make_backend(kind)
    if isinstance(failure, Exception):
        wire.answer(failure)
    elif isinstance(failure, str):  # a Runpod job that ends badly, after /run accepted it
        status, _, error_type = failure.partition(":")
        wire.json(200, {"id": "rp-9", "status": "IN_QUEUE"})
        output = {"error_type": error_type, "status": None} if error_type else None
        wire.json(200, {"id": "rp-9", "status": status, "error": f"{error_type or status} (handler)",
                        "output": output})
    else:
        wire.json(*failure)
    with pytest.raises(cls) as info:
        b.complete(request_for(kind))
    assert type(info.value) is cls
    assert info.value.host == kind
    assert KEY not in str(info.value)  # a key never reaches an error message


def test_a_rate_limit_carries_the_retry_after(make_backend: Callable[..., Backend], wire: Wire) -> None:
    b = make_backend("openai")
    wire.json(429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
              headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as info:
        b.complete(request_for("openai"))
    assert info.value.retry_after == 7


def test_a_missing_key_is_an_auth_error_before_any_request(
        make_backend: Callable[..., Backend], wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERFLEET_UNIT_BACKEND_KEY")
    b = make_backend("openai")
    with pytest.raises(AuthError, match="TIERFLEET_UNIT_BACKEND_KEY"):
        b.complete(request_for("openai"))
    assert wire.requests == []


def test_a_runpod_job_that_outlives_its_timeout_is_cancelled(
        make_backend: Callable[..., Backend], wire: Wire) -> None:
    b = make_backend("runpod", timeout_s=0.05)
    wire.json(200, {"id": "rp-5", "status": "IN_QUEUE"})
    for _ in range(200):  # more polls than the deadline lets it make
        wire.json(200, {"id": "rp-5", "status": "IN_QUEUE"})
    with pytest.raises(HostDown, match="cancelled"):
        b.complete(request_for("runpod"))
    assert wire.requests[-1].method == "POST"
    assert str(wire.requests[-1].url) == "https://api.runpod.test/v2/ep1/cancel/rp-5"


def test_health_reports_the_models_each_host_lists(backend: Backend, kind: str, wire: Wire) -> None:
    if kind == "ollama":
        wire.json(200, {"models": [{"name": "qwen3:4b"}]})
    elif kind == "openai":
        wire.json(200, {"data": [{"id": "other-model"}]})
    else:
        wire.json(200, {"jobs": {"inQueue": 0}, "workers": {"idle": 1, "running": 0}})
    h = backend.health()
    assert h.ok is True and h.host == kind
    if kind == "ollama":
        assert h.model_present is True
    if kind == "openai":
        assert h.model_present is False and "gpt-test" in h.detail
