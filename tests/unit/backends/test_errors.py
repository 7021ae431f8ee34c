"""The error taxonomy's mapping from real hosts' error bodies, and keys kept secret.

Bodies are the shapes each provider's API reference documents, and the ones llama.cpp's
server sends.
"""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import httpx
import pytest

from tierfleet.backends import (
    AuthError,
    BadRequest,
    ContextTooLong,
    HostDown,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
    load_api_key,
)
from tierfleet.backends._http import error_from_message, error_from_response, parse_retry_after


def resp(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        # OpenAI
        (
            429,
            {
                "error": {
                    "message": "Rate limit reached for gpt-5.5 on requests per min. Visit the billing page",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            RateLimited,
        ),
        (
            429,
            {
                "error": {
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
            QuotaExhausted,
        ),
        (
            429,
            {
                "error": {
                    "message": "spend limit",
                    "type": "error",
                    "code": "organization_spend_limit_exceeded",
                }
            },
            QuotaExhausted,
        ),
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            ContextTooLong,
        ),
        (
            401,
            {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}},
            AuthError,
        ),
        (403, {"error": {"message": "Project does not have access"}}, AuthError),
        (
            404,
            {"error": {"message": "The model `x` does not exist", "code": "model_not_found"}},
            ModelNotFound,
        ),
        (400, {"error": {"message": "Invalid value for 'temperature'"}}, BadRequest),
        (503, {"error": {"message": "overloaded", "code": "server_is_overloaded"}}, HostDown),
        (408, {"error": {"message": "timeout"}}, HostDown),
        # Ollama
        (404, {"error": "model 'llama3.2' not found"}, ModelNotFound),
        (400, {"error": "the input length exceeds the context length"}, ContextTooLong),
        (
            503,
            {"error": "server busy, please try again.  maximum pending requests exceeded"},
            HostDown,
        ),
        # llama.cpp server
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "request (431 tokens) exceeds the available "
                    "context size (256 tokens), try increasing it",
                    "type": "exceed_context_size_error",
                }
            },
            ContextTooLong,
        ),
        # gateways
        (402, {"error": {"message": "Insufficient credits"}}, QuotaExhausted),
        (502, {"error": "upstream unreachable"}, HostDown),
    ],
)
def test_error_bodies_map_to_the_taxonomy(status: int, body: object, cls: type) -> None:
    err = error_from_response("h", resp(status, body))
    assert type(err) is cls
    assert err.status == status and err.host == "h" and err.message


def test_non_json_error_keeps_the_text() -> None:
    err = error_from_response("h", httpx.Response(502, text="<html>Bad gateway</html>"))
    assert isinstance(err, HostDown) and "Bad gateway" in err.message


def test_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "12"})) == 12.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(httpx.Headers({"retry-after": future})) or 0) <= 31
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    rl = error_from_response("h", resp(429, {"error": "slow down"}, {"retry-after": "4"}))
    assert isinstance(rl, RateLimited) and rl.retry_after == 4.0


def test_messages_inside_a_200_answer() -> None:
    assert isinstance(error_from_message("h", "input exceeds the context length"), ContextTooLong)
    assert isinstance(error_from_message("h", "model 'x' not found"), ModelNotFound)
    assert isinstance(error_from_message("h", "CUDA out of memory"), HostDown)


def test_keys_never_leak_into_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_KEY", "sk-live-abc123")
    key = load_api_key("SOME_KEY")
    assert key is not None and key.reveal() == "sk-live-abc123"
    assert "abc123" not in repr(key) and "abc123" not in str(key)
    err = error_from_response(
        "h", resp(401, {"error": {"message": "Incorrect API key provided: sk-live-abc123"}}), key
    )
    assert "sk-live-abc123" not in str(err) and "***" in err.message
    echoed = error_from_response("h", resp(400, {"error": "bad header Bearer xyz987"}))
    assert "xyz987" not in echoed.message


def test_key_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FILE_KEY", raising=False)
    assert load_api_key(None) is None
    assert load_api_key("FILE_KEY") is None
    (tmp_path / "FILE_KEY").write_text("from-file\n")
    monkeypatch.setenv("TIERFLEET_SECRETS_DIR", str(tmp_path))
    key = load_api_key("FILE_KEY")
    assert key is not None and key.reveal() == "from-file"
    monkeypatch.setenv("FILE_KEY", "from-env")  # the environment wins
    key = load_api_key("FILE_KEY")
    assert key is not None and key.reveal() == "from-env"
