"""The shipped in-process double, and ``make_backend`` handing a transport to the real clients."""

from __future__ import annotations

import httpx
import pytest

from tierfleet.backends import (
    Backend,
    ChatMessage,
    CompletionRequest,
    HostDown,
    StubBackend,
    make_backend,
)
from tierfleet.config import FleetConfig

REQUEST = CompletionRequest(model="m", messages=[ChatMessage(role="user", content="hi")])


def test_the_stub_plays_its_script_and_records_requests() -> None:
    stub = StubBackend("gpu", answers=["first", HostDown("gpu", "refused")])
    assert isinstance(stub, Backend)

    assert stub.complete(REQUEST).text == "first"
    with pytest.raises(HostDown):
        stub.complete(REQUEST)
    with pytest.raises(HostDown):  # the last answer repeats: a down host stays down
        stub.complete(REQUEST)
    assert stub.requests == [REQUEST] * 3


def test_the_stub_reports_its_health() -> None:
    stub = StubBackend("gpu", healthy=False)
    assert stub.health().ok is False and stub.health_checks == 1
    with pytest.raises(HostDown, match="no scripted answer"):
        stub.complete(REQUEST)


def test_make_backend_forwards_the_transport(builtin_config: FleetConfig) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"model": "qwen3:4b", "done": True, "done_reason": "stop",
                                         "message": {"role": "assistant", "content": "hello"},
                                         "prompt_eval_count": 3, "eval_count": 1})

    backend = make_backend("ollama", builtin_config.hosts["ollama"],
                           transport=httpx.MockTransport(handler))
    got = backend.complete(REQUEST.model_copy(update={"model": "qwen3:4b"}))

    assert got.text == "hello" and seen == ["/api/chat"]
