"""The OpenAI-compatible client against a simulated provider: requests, keys, each error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.sim_fixtures import OPENAI_KEY_ENV
from tierfleet.backends import (
    AuthError,
    BadRequest,
    ChatMessage,
    CompletionRequest,
    ContextTooLong,
    HostDown,
    ModelNotFound,
    OpenAICompatBackend,
    QuotaExhausted,
    RateLimited,
    make_backend,
)
from tierfleet.lab.sim import SimFleet

HOST = "sim-openai"


def req(text: str = "Draft a reply to the customer about the refund.", **kw: object) -> CompletionRequest:
    return CompletionRequest(model="gpt-5.5", messages=[ChatMessage(role="user", content=text)], **kw)


def test_complete(backend: OpenAICompatBackend) -> None:
    c = backend.complete(req(max_tokens=400))
    assert c.text.startswith("[simulated gpt-5.5]") and c.simulated
    assert c.tokens_in and c.tokens_out and c.finish_reason == "stop"
    assert c.external_id and c.external_id.startswith("chatcmpl-")


def test_request_body_follows_openai(backend: OpenAICompatBackend, sim: SimFleet) -> None:
    jpeg = "/9j/4AAQSkZJRgABAQ=="
    backend.complete(
        CompletionRequest(
            model="gpt-5.5",
            messages=[
                ChatMessage(role="system", content="be brief"),
                ChatMessage(role="user", content="describe", images=[jpeg]),
            ],
            max_tokens=64,
            json_output=True,
            options={"seed": 7},
        )
    )
    sent = sim.requests(HOST)[-1]
    assert sent["bearer"] is True
    body = sent["body"]
    assert body["max_tokens"] == 64 and body["seed"] == 7 and body["stream"] is False
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    parts = body["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "describe"}
    assert parts[1]["image_url"]["url"] == f"data:image/jpeg;base64,{jpeg}"


def test_max_completion_tokens_replaces_max_tokens(backend: OpenAICompatBackend, sim: SimFleet) -> None:
    c = backend.complete(req(max_tokens=64, options={"max_completion_tokens": 3}))
    body = sim.requests(HOST)[-1]["body"]
    assert "max_tokens" not in body and body["max_completion_tokens"] == 3
    assert c.finish_reason == "length" and c.tokens_out == 3


def test_json_answer_is_json(backend: OpenAICompatBackend) -> None:
    assert json.loads(backend.complete(req(json_output=True)).text)["simulated"] is True


def test_usage_absent_stays_none(backend: OpenAICompatBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "no_counts", count=1)
    c = backend.complete(req())
    assert c.tokens_in is None and c.tokens_out is None


def test_health(backend: OpenAICompatBackend) -> None:
    h = backend.health()
    assert h.ok and h.model_present and h.models == ["gpt-5.5"] and h.simulated
    assert backend.health("gpt-9").model_present is False


def test_down_and_hang_are_host_down(backend: OpenAICompatBackend, sim: SimFleet) -> None:
    sim.down(HOST)
    with pytest.raises(HostDown):
        backend.complete(req())
    assert not backend.health().ok
    sim.up(HOST)
    sim.fault(HOST, "hang", count=1)
    with pytest.raises(HostDown, match="timeout"):
        backend.complete(req())


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_host_down(backend: OpenAICompatBackend, sim: SimFleet, status: int) -> None:
    sim.fault(HOST, "error", status=status, count=1)
    with pytest.raises(HostDown) as err:
        backend.complete(req())
    assert err.value.status == status


def test_rate_limit_and_quota_are_told_apart(backend: OpenAICompatBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "rate_limit", retry_after=1.5, count=1)
    with pytest.raises(RateLimited) as rl:
        backend.complete(req())
    assert rl.value.retry_after == 1.5 and rl.value.fallback
    sim.fault(HOST, "quota", count=1)
    with pytest.raises(QuotaExhausted, match="quota"):
        backend.complete(req())


def test_context_length_exceeded(backend: OpenAICompatBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "context", count=1)
    with pytest.raises(ContextTooLong, match="maximum context length"):
        backend.complete(req())


def test_context_of_a_small_model_overflows_for_real(sim: SimFleet) -> None:
    # Ollama's own /v1 layer, reached as an OpenAI host: the 32k window overflows.
    host = sim.config.hosts["sim-ollama"]
    small = make_backend("ollama-v1", host.model_copy(update={"url": host.url + "/v1", "kind": "openai"}))
    r = CompletionRequest(model="qwen3:4b", messages=[ChatMessage(role="user", content="word " * 40_000)])
    with pytest.raises(ContextTooLong):
        small.complete(r)
    small.close()


def test_auth_errors(backend: OpenAICompatBackend, sim: SimFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    sim.fault(HOST, "auth", count=1)
    with pytest.raises(AuthError) as err:
        backend.complete(req())
    assert err.value.fallback is False and err.value.status == 401
    monkeypatch.setenv(OPENAI_KEY_ENV, "sk-wrong-secret-value")
    wrong = make_backend(HOST, sim.config.hosts[HOST])
    # The client read its key at construction; the in-process sim reads the variable per
    # request, so changing it now makes the client's key the wrong one.
    monkeypatch.setenv(OPENAI_KEY_ENV, "sk-the-real-one")
    with pytest.raises(AuthError) as err2:
        wrong.complete(req())
    assert "sk-wrong-secret-value" not in str(err2.value)
    assert "sk-wrong-secret-value" not in repr(wrong)
    wrong.close()
    monkeypatch.delenv(OPENAI_KEY_ENV)
    nokey = make_backend(HOST, sim.config.hosts[HOST])
    with pytest.raises(AuthError, match=OPENAI_KEY_ENV):
        nokey.complete(req())
    assert sim.counters(HOST).get("openai_chat", 0) == 2  # the keyless call never left
    nokey.close()


def test_key_from_secrets_dir(sim: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim.reset()
    key = "test-openai-key"
    monkeypatch.delenv(OPENAI_KEY_ENV)
    (tmp_path / OPENAI_KEY_ENV).write_text(key + "\n")
    monkeypatch.setenv("TIERFLEET_SECRETS_DIR", str(tmp_path))
    b = make_backend(HOST, sim.config.hosts[HOST])
    assert b.complete(req()).text
    assert key not in repr(b) and key not in repr(b.__dict__)
    b.close()


def test_model_not_found(backend: OpenAICompatBackend) -> None:
    r = req()
    r.model = "gpt-0"
    with pytest.raises(ModelNotFound, match="gpt-0"):
        backend.complete(r)


def test_other_4xx_is_bad_request(backend: OpenAICompatBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "error", status=422, message="temperature must be <= 2", count=1)
    with pytest.raises(BadRequest, match="temperature must be <= 2"):
        backend.complete(req())
