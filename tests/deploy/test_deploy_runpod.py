"""deploy/runpod_handler.py and deploy/healthcheck.py against real servers on loopback.

The handler forwards to an OpenAI-compatible model server; here that server is a
stdlib HTTP server that records what it was sent and answers like vLLM would.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.lab.processes import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # Dataclasses and pydantic look their module up in sys.modules while it loads.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rh = _load("runpod_handler")
hc = _load("healthcheck")


class ModelServer:
    """An OpenAI-compatible server double: records requests, answers as told."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: Any = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "json": json.loads(raw) if raw else None,
                    }
                )
                body = outer.body
                if body is None:
                    body = outer.default_body(outer.requests[-1]["json"])
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @staticmethod
    def default_body(req: dict[str, Any] | None) -> dict[str, Any]:
        if req is None:  # GET /v1/models
            return {"object": "list", "data": [{"id": "qwen3-coder:30b", "object": "model"}]}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": req["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": '{"ok": true}'},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26},
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
def model_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelServer]:
    srv = ModelServer()
    srv.thread.start()
    for var in ("MODEL_NAME", "MODEL_API_KEY", "MODEL_TIMEOUT_S", "MAX_TOKENS_CAP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODEL_BASE_URL", srv.base_url)
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def test_handler_module_imports_without_the_runpod_sdk() -> None:
    # The SDK lives only in the Runpod container; importing the handler must not need it.
    assert "runpod" not in sys.modules
    assert callable(rh.handler) and callable(rh.main)


def test_handler_maps_input_to_an_openai_request_and_back(
    model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_API_KEY", "local-secret")
    job = {
        "id": "rp-1",
        "input": {
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": "What is in this picture?", "images": [PNG]},
            ],
            "model": "qwen3-coder:30b",
            "max_tokens": 64,
            "json_output": True,
        },
    }
    out = rh.handler(job)
    assert out == {
        "text": '{"ok": true}',
        "tokens_in": 21,
        "tokens_out": 5,
        "finish_reason": "stop",
        "model": "qwen3-coder:30b",
    }
    (req,) = model_server.requests
    assert (req["method"], req["path"]) == ("POST", "/v1/chat/completions")
    assert req["headers"]["Authorization"] == "Bearer local-secret"
    sent = req["json"]
    assert sent["model"] == "qwen3-coder:30b"
    assert sent["max_tokens"] == 64
    assert sent["stream"] is False
    assert sent["response_format"] == {"type": "json_object"}
    assert "temperature" not in sent
    assert sent["messages"][0] == {"role": "system", "content": "Answer in JSON."}
    parts = sent["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "What is in this picture?"}
    assert parts[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


def test_handler_uses_model_name_from_env_and_plain_text(
    model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_NAME", "qwen3-coder:30b")
    out = rh.handler({"id": "rp-2", "input": {"messages": [{"role": "user", "content": "hi"}]}})
    assert out["model"] == "qwen3-coder:30b"
    sent = model_server.requests[0]["json"]
    assert sent["model"] == "qwen3-coder:30b"
    assert sent["max_tokens"] == 1024
    assert "response_format" not in sent
    assert "Authorization" not in model_server.requests[0]["headers"]
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


def test_handler_reports_a_cut_off_answer(model_server: ModelServer) -> None:
    model_server.body = {
        "model": "qwen3-coder:30b",
        "choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 8},
    }
    out = rh.handler({"id": "x", "input": {"messages": [{"role": "user", "content": "go"}], "model": "m"}})
    assert out == {
        "text": "",
        "tokens_in": 3,
        "tokens_out": 8,
        "finish_reason": "length",
        "model": "qwen3-coder:30b",
    }


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 65536 tokens. However, "
                "you requested 70000 tokens.",
                "type": "BadRequestError",
                "code": 400,
            },
            "context_length_exceeded",
        ),
        (
            400,
            {"error": {"code": 400, "message": "too big", "type": "exceed_context_size_error"}},
            "context_length_exceeded",
        ),
        (404, {"error": {"message": "The model `nope` does not exist."}}, "model_not_found"),
        (429, {"error": {"message": "slow down"}}, "rate_limited"),
        (400, {"error": {"message": "temperature must be <= 2"}}, "bad_request"),
        (500, b"<html>boom</html>", "upstream_error"),
        (200, {"choices": []}, "bad_upstream_response"),
        (200, b"not json", "bad_upstream_response"),
    ],
)
def test_handler_classifies_model_server_errors(
    model_server: ModelServer, status: int, body: Any, error_type: str
) -> None:
    model_server.status = status
    model_server.body = body
    out = rh.handler({"id": "e", "input": {"messages": [{"role": "user", "content": "x"}], "model": "m"}})
    assert set(out) == {"error", "error_type", "status"}
    assert out["error_type"] == error_type
    assert out["error"]
    assert out["status"] == (status if status >= 300 else None)


def test_handler_reports_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    out = rh.handler({"id": "u", "input": {"messages": [{"role": "user", "content": "x"}], "model": "m"}})
    assert out["error_type"] == "upstream_unreachable"


@pytest.mark.parametrize(
    ("job_input", "needle"),
    [
        (None, "JSON object"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "m", "max_tokens": 0}, "max"),
        (
            {"messages": [{"role": "user", "content": "x"}], "model": "m", "max_tokens": 10**6},
            "cap",
        ),
        ({"messages": [{"role": "robot", "content": "x"}], "model": "m"}, "role"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "m", "stream": True}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}]}, "MODEL_NAME"),
        (
            {"messages": [{"role": "user", "content": "x", "images": ["a"] * 9}], "model": "m"},
            "images",
        ),
    ],
)
def test_handler_refuses_bad_input_without_calling_the_server(
    model_server: ModelServer, job_input: Any, needle: str
) -> None:
    out = rh.handler({"id": "b", "input": job_input})
    assert out["error_type"] == "bad_input"
    assert needle in out["error"]
    assert model_server.requests == []


def test_wait_ready_polls_the_models_endpoint(model_server: ModelServer) -> None:
    rh.wait_ready(rh.Settings.from_env(), timeout_s=5)
    assert model_server.requests[0]["path"] == "/v1/models"
    dead = rh.Settings(base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(TimeoutError):
        rh.wait_ready(dead, timeout_s=0)


def test_image_url_sniffs_the_type() -> None:
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 8).decode()
    assert rh.image_url(jpeg).startswith("data:image/jpeg;base64,")
    assert rh.image_url("data:image/webp;base64,AAAA") == "data:image/webp;base64,AAAA"


# -- healthcheck.py ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "alive"), [(200, True), (401, True), (404, True), (503, False)])
def test_http_probe_counts_any_answer_below_500(model_server: ModelServer, status: int, alive: bool) -> None:
    model_server.status = status
    model_server.body = {"detail": "x"}
    assert hc.http_alive(f"{model_server.base_url}/status") is alive
    assert hc.main(["http", f"{model_server.base_url}/status"]) == (0 if alive else 1)


def test_http_probe_fails_on_a_closed_port_and_refuses_other_schemes() -> None:
    assert hc.http_alive(f"http://127.0.0.1:{free_port()}/") is False
    with pytest.raises(ValueError):
        hc.http_alive("file:///etc/passwd")
    assert hc.main([]) == 2


def test_redis_probe(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hc.redis_alive(redis_server.url) is True
    assert hc.redis_alive(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5) is False
    # Without a URL it reads the fleet config, so TIERFLEET_REDIS_URL applies.
    monkeypatch.setenv("TIERFLEET_REDIS_URL", redis_server.url)
    assert hc.main(["redis"]) == 0
