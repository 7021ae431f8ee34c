"""One scripted host for the backend clients: ``httpx.MockTransport``, no socket opened.

``wire.answer(...)`` queues what the host says next (a response, or an httpx error
to raise); every request the client sends is kept in ``wire.requests``. The
``backend`` fixture runs a test once per host kind; ``make_backend(kind)`` builds
one client for tests of a single kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tierfleet.backends import OllamaBackend, OpenAICompatBackend, RunpodBackend
from tierfleet.backends.base import ChatMessage, CompletionRequest
from tierfleet.config import HostConfig

KEY = "sk-unit-0123456789abcdef"
KEY_ENV = "TIERFLEET_UNIT_BACKEND_KEY"
KINDS = ("ollama", "openai", "runpod")
HOSTS: dict[str, HostConfig] = {
    "ollama": HostConfig(kind="ollama", url="http://gpu.test:11434", tier="local-gpu",
                         models=["qwen3:4b"]),
    "openai": HostConfig(kind="openai", url="https://api.provider.test/v1", tier="paid",
                         models=["gpt-test"], api_key_env=KEY_ENV),
    "runpod": HostConfig(kind="runpod", url="https://api.runpod.test/v2/ep1", tier="runpod",
                         models=["coder:30b"], api_key_env=KEY_ENV, timeout_s=5),
}
MODELS = {"ollama": "qwen3:4b", "openai": "gpt-test", "runpod": "coder:30b"}
Backend = OllamaBackend | OpenAICompatBackend | RunpodBackend


class Wire:
    """The host's side of the conversation, in order."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._script: list[httpx.Response | Exception] = []

    def answer(self, *answers: httpx.Response | Exception) -> None:
        self._script.extend(answers)

    def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.answer(httpx.Response(status, json=body, headers=headers))

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self._script, f"unscripted request: {request.method} {request.url}"
        answer = self._script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def make_backend(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Backend]]:
    monkeypatch.setenv(KEY_ENV, KEY)
    made: list[Backend] = []

    def make(kind: str, **host_changes: Any) -> Backend:
        host = HOSTS[kind].model_copy(update=host_changes)
        transport = httpx.MockTransport(wire.handle)
        b: Backend
        if kind == "runpod":
            # Polls without waiting: the script decides what each /status says.
            b = RunpodBackend(kind, host, transport=transport, poll_initial_s=0.001, poll_max_s=0.001)
        elif kind == "ollama":
            b = OllamaBackend(kind, host, transport=transport)
        else:
            b = OpenAICompatBackend(kind, host, transport=transport)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(kind: str, make_backend: Callable[..., Backend]) -> Backend:
    return make_backend(kind)


def request_for(kind: str, text: str = "Summarise: the build failed twice.", **kw: Any) -> CompletionRequest:
    return CompletionRequest(model=MODELS[kind], messages=[ChatMessage(role="user", content=text)], **kw)
