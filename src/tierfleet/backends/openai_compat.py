"""Any OpenAI-compatible server: ``POST {url}/chat/completions``, ``GET {url}/models``.

``host.url`` includes the version prefix (``https://api.openai.com/v1``,
``http://127.0.0.1:8080/v1``, ``https://openrouter.ai/api/v1``,
``http://127.0.0.1:11434/v1`` for Ollama, ``.../v2/<id>/openai/v1`` for a Runpod
vLLM worker), so the same client serves llama.cpp server, vLLM, LM Studio,
LiteLLM, OpenRouter and paid providers.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from ._http import HttpBackend, is_simulated, json_body, reported_count
from .base import ChatMessage, Completion, CompletionRequest, HostDown, HostHealth

_MAGIC = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


def image_mime(b64: str) -> str:
    """The MIME type a data URL needs, read from the image's first bytes."""
    for prefix, mime in _MAGIC:
        if b64.startswith(prefix):
            return mime
    return "image/png"


def message_payload(m: ChatMessage) -> dict[str, Any]:
    if m.tool_calls or m.role == "tool":
        msg: dict[str, Any] = {"role": m.role, "content": m.content or None}
        if m.tool_calls:
            msg["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
            msg["content"] = m.content
        return msg
    if not m.images:
        return {"role": m.role, "content": m.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}]
    for img in m.images:
        # Remote image URLs are not accepted everywhere (Ollama's /v1); inline data URLs are.
        parts.append({"type": "image_url", "image_url": {"url": f"data:{image_mime(img)};base64,{img}"}})
    return {"role": m.role, "content": parts}


class OpenAICompatBackend(HttpBackend):
    kind = "openai"

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [message_payload(m) for m in request.messages],
            "stream": False,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": request.json_schema}}
        elif request.json_output:
            body["response_format"] = {"type": "json_object"}
        if request.tools:
            body["tools"] = request.tools
            if request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
        # Provider-specific fields (seed, top_p, reasoning_effort, ...) pass through as given.
        body.update(request.options)
        if "max_completion_tokens" in request.options:
            # Reasoning models refuse the older max_tokens field.
            body.pop("max_tokens", None)
        return body

    def _streamed(self, request: CompletionRequest) -> tuple[httpx.Response, dict[str, Any]]:
        """OpenAI's SSE stream: deltas to ``on_token``; returns a one-shot-shaped answer
        (text joined, the last chunk's finish_reason, the usage chunk's counts)."""
        assert request.on_token is not None
        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        out: dict[str, Any] = {"choices": [{"message": {}, "finish_reason": None}]}
        for response, line in self._stream_lines(f"{self.base_url}/chat/completions", body):
            if not line.startswith("data:"):
                continue  # SSE comments and event names
            data = line[5:].strip()
            if data == "[DONE]":
                out["choices"][0]["message"]["content"] = "".join(parts)
                return response, out
            try:
                chunk = json.loads(data)
            except ValueError:
                raise HostDown(self.name, f"unreadable stream event: {data[:200]}") from None
            if "error" in chunk:
                raise HostDown(self.name, str(chunk["error"])[:500])
            out["id"], out["model"] = chunk.get("id", out.get("id")), chunk.get("model", out.get("model"))
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    parts.append(piece)
                    request.on_token(piece)
                if choice.get("finish_reason"):
                    out["choices"][0]["finish_reason"] = choice["finish_reason"]
        raise HostDown(self.name, "stream ended without [DONE]")

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        if request.on_token is not None and not request.tools:
            response, body = self._streamed(request)
        else:
            response = self._request("POST", f"{self.base_url}/chat/completions",
                                     json_data=self._body(request))
            body = json_body(self.name, response)
        choices = body.get("choices") or []
        if not choices:
            raise HostDown(self.name, "answer has no choices", status=response.status_code)
        choice = choices[0]
        message = choice.get("message") or {}
        usage = body.get("usage") or {}
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)] or None
        return Completion(
            text=message.get("content") or "",
            model=str(body.get("model") or request.model),
            host=self.name,
            tokens_in=reported_count(usage.get("prompt_tokens")),
            tokens_out=reported_count(usage.get("completion_tokens")),
            latency_s=time.monotonic() - started,
            finish_reason=choice.get("finish_reason"),
            simulated=is_simulated(response),
            external_id=body.get("id"),
            tool_calls=calls,
        )

    def health(self, model: str | None = None) -> HostHealth:
        """Up when ``/models`` answers; ``model_present`` when the model is listed."""
        started = time.monotonic()
        probed = self._probe(f"{self.base_url}/models")
        if isinstance(probed, HostHealth):
            return probed
        response, body = probed
        listed = [str(m.get("id")) for m in body.get("data") or [] if isinstance(m, dict)]
        wanted = [model] if model else list(self.host.models)
        have = set(listed)
        for m in body.get("data") or []:
            # llama.cpp lists aliases beside the id.
            if isinstance(m, dict):
                have.update(str(a) for a in m.get("aliases") or [])
        missing = [m for m in wanted if m not in have]
        return HostHealth(
            host=self.name,
            ok=True,
            latency_s=time.monotonic() - started,
            detail=f"model not listed: {', '.join(missing)}" if missing else "",
            models=listed,
            model_present=(not missing) if wanted else None,
            simulated=is_simulated(response),
        )



__all__ = ["OpenAICompatBackend", "image_mime", "message_payload"]
