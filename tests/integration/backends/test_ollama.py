"""The Ollama client against a simulated Ollama on loopback: requests, answers, each error."""

from __future__ import annotations

import pytest

from tierfleet.backends import (
    BadRequest,
    ChatMessage,
    CompletionRequest,
    ContextTooLong,
    HostDown,
    ModelNotFound,
    OllamaBackend,
    QuotaExhausted,
    RateLimited,
)
from tierfleet.lab.sim import SimFleet

HOST = "sim-ollama"


def req(text: str = "Summarize: the printer on floor 3 jams daily.", **kw: object) -> CompletionRequest:
    return CompletionRequest(model="qwen3:4b", messages=[ChatMessage(role="user", content=text)], **kw)


def test_complete_reports_text_tokens_and_simulation(backend: OllamaBackend) -> None:
    c = backend.complete(req(max_tokens=300))
    assert c.text.startswith("[simulated qwen3:4b]")
    assert c.simulated is True and c.host == HOST and c.model == "qwen3:4b"
    assert c.tokens_in and c.tokens_in > 0 and c.tokens_out and c.tokens_out > 0
    assert c.finish_reason == "stop" and c.latency_s > 0


def test_request_body_follows_ollama(backend: OllamaBackend, sim: SimFleet) -> None:
    image = "iVBORw0KGgoAAAANSUhEUg=="
    backend.complete(
        CompletionRequest(
            model="qwen3:4b",
            messages=[ChatMessage(role="user", content="what is this?", images=[image])],
            max_tokens=50,
            temperature=0.2,
            json_output=True,
            options={"num_ctx": 8192, "keep_alive": "10m"},
        )
    )
    body = sim.requests(HOST)[-1]["body"]
    assert body["stream"] is False and body["truncate"] is False and body["format"] == "json"
    assert body["options"] == {"num_predict": 50, "temperature": 0.2, "num_ctx": 8192}
    assert body["keep_alive"] == "10m"
    assert body["messages"][0]["images"] == [image]


def test_json_output_and_length_cut(backend: OllamaBackend) -> None:
    import json

    data = json.loads(backend.complete(req(json_output=True)).text)
    assert data["simulated"] is True
    cut = backend.complete(req(max_tokens=4))
    assert cut.finish_reason == "length" and cut.tokens_out == 4


def test_absent_counts_stay_none(backend: OllamaBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "no_counts", count=1)
    c = backend.complete(req())
    assert c.tokens_in is None and c.tokens_out is None and c.text


def test_health_and_model_presence(backend: OllamaBackend) -> None:
    h = backend.health()
    assert h.ok and h.model_present is True and h.simulated and h.models == ["qwen3:4b"]
    assert backend.health("qwen3:4b").model_present is True
    missing = backend.health("llama3.2")
    assert missing.ok and missing.model_present is False and "llama3.2" in missing.detail


def test_down_is_host_down(backend: OllamaBackend, sim: SimFleet) -> None:
    sim.down(HOST)
    with pytest.raises(HostDown, match="connection"):
        backend.complete(req())
    h = backend.health()
    assert h.ok is False and h.detail
    sim.up(HOST)
    assert backend.health().ok


def test_hang_is_host_down_after_the_read_timeout(backend: OllamaBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "hang")
    with pytest.raises(HostDown, match="read timeout"):
        backend.complete(req())
    assert backend.health().ok is False  # health hangs too, and gives up at its own timeout


@pytest.mark.parametrize("fault", ["error", "busy"])
def test_5xx_and_busy_are_host_down(backend: OllamaBackend, sim: SimFleet, fault: str) -> None:
    sim.fault(HOST, fault, count=1)
    with pytest.raises(HostDown) as err:
        backend.complete(req())
    assert err.value.status == (500 if fault == "error" else 503)
    assert err.value.fallback is True


def test_rate_limited_carries_retry_after(backend: OllamaBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "rate_limit", retry_after=3, count=1)
    with pytest.raises(RateLimited) as err:
        backend.complete(req())
    assert err.value.retry_after == 3.0


def test_quota(backend: OllamaBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "quota", count=1)
    with pytest.raises(QuotaExhausted):
        backend.complete(req())


def test_context_too_long_injected_and_real(backend: OllamaBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "context", count=1)
    with pytest.raises(ContextTooLong):
        backend.complete(req())
    # A prompt over the 32k window: we send truncate=false, so Ollama refuses instead of cutting.
    with pytest.raises(ContextTooLong, match="exceeds the context length"):
        backend.complete(req("word " * 40_000))


def test_model_not_found(backend: OllamaBackend) -> None:
    r = req()
    r.model = "llama9:70b"
    with pytest.raises(ModelNotFound, match="llama9:70b") as err:
        backend.complete(r)
    assert err.value.fallback is False


def test_other_4xx_is_bad_request_with_the_hosts_message(backend: OllamaBackend, sim: SimFleet) -> None:
    sim.fault(HOST, "error", status=400, message="invalid options: num_gpu", count=1)
    with pytest.raises(BadRequest, match="invalid options: num_gpu") as err:
        backend.complete(req())
    assert err.value.fallback is False and err.value.status == 400
