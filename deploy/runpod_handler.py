"""Runpod Serverless handler for the GPU tier's model (the fleet's ``runpod`` tier).

The container runs an OpenAI-compatible model server (vLLM or llama.cpp server)
on loopback, at ``MODEL_BASE_URL``; this handler takes Runpod jobs and forwards
each to it. What the fleet's Runpod backend sends as a job's input::

    {"messages": [{"role": "user", "content": "...", "images": ["<base64>"]}],
     "model": "qwen3-coder:30b", "max_tokens": 1024, "json_output": false}

and gets back as the job's output::

    {"text": "...", "tokens_in": 12, "tokens_out": 34, "finish_reason": "stop",
     "model": "qwen3-coder:30b"}

Failures come back as ``{"error": "<message>", "error_type": "<kind>", "status": <int|null>}``:
Runpod marks the job FAILED with ``error`` and keeps the other keys in its
output, so the fleet can tell a prompt too long for the window
(``context_length_exceeded``: try a larger window) from bad input
(``bad_input``: do not retry) and from a server problem (``upstream_*``: fall back).

Environment: ``MODEL_BASE_URL`` (default http://127.0.0.1:8000/v1), ``MODEL_NAME``
(the model when a job names none), ``MODEL_API_KEY`` (if the local server wants
one), ``MODEL_TIMEOUT_S`` (default 600), ``MAX_TOKENS_CAP`` (default 32768),
``MODEL_READY_TIMEOUT_S`` (how long start-up waits for the server, default 1800).

The runpod SDK is imported only in ``main()``, so the pure parts (input checks,
request shaping, response mapping) import and test without it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_MESSAGES = 200
MAX_IMAGES = 8
MAX_CONTENT_CHARS = 400_000
MAX_IMAGE_CHARS = 20_000_000  # base64: Runpod's own payload limit is 10-20 MB

ErrorType = Literal[
    "bad_input",
    "context_length_exceeded",
    "model_not_found",
    "rate_limited",
    "bad_request",
    "upstream_error",
    "upstream_unreachable",
    "upstream_timeout",
    "bad_upstream_response",
]


@dataclass(frozen=True)
class Settings:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 600.0
    max_tokens_cap: int = 32768

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            base_url=os.environ.get("MODEL_BASE_URL", cls.base_url).rstrip("/"),
            model=os.environ.get("MODEL_NAME") or None,
            api_key=os.environ.get("MODEL_API_KEY") or None,
            timeout_s=float(os.environ.get("MODEL_TIMEOUT_S", cls.timeout_s)),
            max_tokens_cap=int(os.environ.get("MAX_TOKENS_CAP", cls.max_tokens_cap)),
        )


class HandlerError(Exception):
    def __init__(self, error_type: ErrorType, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status

    def as_output(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type, "status": self.status}


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    # Base64 images (as the fleet's Message carries them) or data: URLs.
    images: list[str] = Field(default_factory=list, max_length=MAX_IMAGES)


class HandlerInput(BaseModel):
    # Unknown fields are refused: a typo must not silently change a request.
    model_config = ConfigDict(extra="forbid")

    messages: list[InputMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    max_tokens: int = Field(default=1024, ge=1)
    json_output: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)


def parse_input(raw: Any, settings: Settings) -> HandlerInput:
    """Validate a job's input; every problem is named in one ``bad_input`` error."""
    if not isinstance(raw, dict):
        raise HandlerError("bad_input", "input must be a JSON object")
    try:
        inp = HandlerInput.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in exc.errors()
        )
        raise HandlerError("bad_input", problems) from None
    if inp.max_tokens > settings.max_tokens_cap:
        raise HandlerError(
            "bad_input", f"max_tokens: {inp.max_tokens} is above the cap {settings.max_tokens_cap}"
        )
    total_images = sum(len(img) for m in inp.messages for img in m.images)
    if total_images > MAX_IMAGE_CHARS:
        raise HandlerError("bad_input", "images: payload too large")
    if inp.model is None and settings.model is None:
        raise HandlerError("bad_input", "model: not given and MODEL_NAME is not set")
    return inp


_IMAGE_MAGIC = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


def image_url(image: str) -> str:
    """A data URL for a base64 image (already-formed data URLs pass through)."""
    if image.startswith("data:"):
        return image
    mime = next((m for prefix, m in _IMAGE_MAGIC if image.startswith(prefix)), "image/png")
    return f"data:{mime};base64,{image}"


def build_request(inp: HandlerInput, settings: Settings) -> dict[str, Any]:
    """The OpenAI chat-completions body for a validated input."""
    messages: list[dict[str, Any]] = []
    for m in inp.messages:
        if m.images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}]
            parts += [{"type": "image_url", "image_url": {"url": image_url(i)}} for i in m.images]
            messages.append({"role": m.role, "content": parts})
        else:
            messages.append({"role": m.role, "content": m.content})
    body: dict[str, Any] = {
        "model": inp.model or settings.model,
        "messages": messages,
        "max_tokens": inp.max_tokens,
        "stream": False,
    }
    if inp.json_output:
        body["response_format"] = {"type": "json_object"}
    if inp.temperature is not None:
        body["temperature"] = inp.temperature
    return body


def parse_completion(body: Any, requested_model: str) -> dict[str, Any]:
    """Map an OpenAI chat-completions response to the handler's output."""
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
        usage = body.get("usage") or {}
        return {
            "text": text,
            "tokens_in": int(usage.get("prompt_tokens") or 0),
            "tokens_out": int(usage.get("completion_tokens") or 0),
            "finish_reason": choice.get("finish_reason") or "stop",
            "model": body.get("model") or requested_model,
        }
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise HandlerError(
            "bad_upstream_response", f"model server answered without a completion ({exc!r})"
        ) from None


_CONTEXT_HINTS = ("context_length_exceeded", "maximum context length", "exceed_context_size")


def upstream_error(status: int, text: str) -> HandlerError:
    """Classify a non-2xx answer of the model server (vLLM, llama.cpp server)."""
    message = text[:2000]
    code = ""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    # OpenAI and llama.cpp nest {"error": {...}}; older vLLM answers the fields flat.
    err = payload.get("error", payload) if isinstance(payload, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)[:2000]
        code = f"{err.get('code') or ''} {err.get('type') or ''}"
    elif isinstance(err, str):
        message = err[:2000]
    lowered = f"{code} {message}".lower()
    if any(h in lowered for h in _CONTEXT_HINTS):
        return HandlerError("context_length_exceeded", message, status)
    if status == 404:
        return HandlerError("model_not_found", message, status)
    if status == 429:
        return HandlerError("rate_limited", message, status)
    if 400 <= status < 500:
        return HandlerError("bad_request", message, status)
    return HandlerError("upstream_error", message, status)


def _headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}


def complete(inp: HandlerInput, settings: Settings) -> dict[str, Any]:
    body = build_request(inp, settings)
    timeout = httpx.Timeout(settings.timeout_s, connect=5.0)
    try:
        with httpx.Client(timeout=timeout) as client:
            resp = client.post(f"{settings.base_url}/chat/completions", json=body, headers=_headers(settings))
    except httpx.TimeoutException as exc:
        raise HandlerError("upstream_timeout", f"model server timed out: {exc!r}") from None
    except httpx.TransportError as exc:
        raise HandlerError("upstream_unreachable", f"model server unreachable: {exc!r}") from None
    if resp.status_code >= 300:
        raise upstream_error(resp.status_code, resp.text)
    try:
        payload = resp.json()
    except ValueError:
        raise HandlerError("bad_upstream_response", "model server answered non-JSON") from None
    return parse_completion(payload, body["model"])


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Runpod's entry point: never raises, so every failure carries its error_type."""
    settings = Settings.from_env()
    try:
        inp = parse_input(job.get("input") if isinstance(job, dict) else None, settings)
        return complete(inp, settings)
    except HandlerError as exc:
        return exc.as_output()


def wait_ready(settings: Settings, timeout_s: float) -> None:
    """Block until the model server lists its models (it loads weights first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            resp = httpx.get(f"{settings.base_url}/models", headers=_headers(settings), timeout=5.0)
            if resp.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"model server not ready after {timeout_s:.0f} s")
        time.sleep(1.0)


def main() -> None:
    import runpod  # only inside the Runpod container

    wait_ready(Settings.from_env(), float(os.environ.get("MODEL_READY_TIMEOUT_S", "1800")))
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
