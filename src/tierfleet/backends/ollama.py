"""Ollama's native API: ``POST /api/chat`` and ``GET /api/tags``.

Facts of Ollama's API that shape this client: ``/api/chat`` streams
unless ``"stream": false``; durations are nanoseconds; metric fields are omitted
when zero or cached, so absent counts stay ``None`` and the caller estimates;
by default an over-long prompt is silently truncated, so we send
``"truncate": false`` to get an error we can route on instead.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from ._http import HttpBackend, error_from_message, is_simulated, json_body, reported_count
from .base import Completion, CompletionRequest, HostDown, HostHealth

# Request fields that sit beside ``options`` in Ollama's body rather than inside it.
_TOP_LEVEL = frozenset({"keep_alive", "think", "truncate", "shift", "format", "tools", "logprobs"})


def to_ollama_call(call: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's tool call -> Ollama's: arguments as an object, not a JSON string."""
    fn = call.get("function") or {}
    args: Any = fn.get("arguments") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except ValueError:
            args = {}
    return {"function": {"name": str(fn.get("name") or ""), "arguments": args}}


def from_ollama_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    """Ollama's tool call -> OpenAI's shape (an id, arguments as a JSON string)."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    return {"id": str(call.get("id") or f"call_{index}"), "type": "function",
            "function": {"name": str(fn.get("name") or ""),
                         "arguments": args if isinstance(args, str)
                         else json.dumps(args or {}, ensure_ascii=False)}}


def normalise_model(name: str) -> str:
    """Ollama names are ``model:tag`` and the tag defaults to ``latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaBackend(HttpBackend):
    kind = "ollama"

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        names: dict[str, str] = {}  # tool call id -> function name, for the tool turns
        for m in request.messages:
            msg: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.images:
                msg["images"] = list(m.images)
            if m.tool_calls:
                msg["tool_calls"] = [to_ollama_call(c) for c in m.tool_calls]
                names.update({str(c.get("id")): msg["tool_calls"][i]["function"]["name"]
                              for i, c in enumerate(m.tool_calls)})
            if m.role == "tool" and m.tool_call_id in names:
                # Ollama matches a tool's answer to its call by the function's name.
                msg["tool_name"] = names[m.tool_call_id]
            messages.append(msg)
        options: dict[str, Any] = {}
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.temperature is not None:
            options["temperature"] = request.temperature
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "stream": False,
            "truncate": False,
        }
        for key, value in request.options.items():
            if key in _TOP_LEVEL:
                body[key] = value
            else:
                options[key] = value
        if options:
            body["options"] = options
        if request.json_schema is not None:
            body["format"] = request.json_schema  # Ollama constrains decoding to a schema
        elif request.json_output:
            body["format"] = "json"
        if request.tools and request.tool_choice != "none":
            # Ollama takes OpenAI's tools shape; it has no tool_choice ("auto" is all it does).
            body["tools"] = request.tools
        return body

    def _streamed(self, request: CompletionRequest) -> tuple[httpx.Response, dict[str, Any]]:
        """Ollama's NDJSON stream: text chunks to ``on_token``; returns the final record
        with the whole text put back, so the caller reads it like a one-shot answer."""
        assert request.on_token is not None
        body = {**self._body(request), "stream": True}
        parts: list[str] = []
        for response, line in self._stream_lines(f"{self.base_url}/api/chat", body):
            try:
                rec = json.loads(line)
            except ValueError:
                raise HostDown(self.name, f"unreadable stream line: {line[:200]}") from None
            if "error" in rec:  # mid-stream errors come as a line, the status already 200
                raise error_from_message(self.name, str(rec["error"]), self._key)
            piece = (rec.get("message") or {}).get("content") or ""
            if piece:
                parts.append(piece)
                request.on_token(piece)
            if rec.get("done"):
                rec.setdefault("message", {})["content"] = "".join(parts)
                return response, rec
        raise HostDown(self.name, "stream ended before its final record")

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        if request.on_token is not None and not request.tools:
            response, body = self._streamed(request)
        else:
            response = self._request("POST", f"{self.base_url}/api/chat",
                                     json_data=self._body(request))
            body = json_body(self.name, response)
        if "error" in body:
            # Ollama reports some failures inside a 200 answer.
            raise error_from_message(self.name, str(body["error"]), self._key)
        message = body.get("message") or {}
        text = message.get("content") or ""
        reason = body.get("done_reason") or ("stop" if body.get("done") else None)
        calls = [from_ollama_call(c, i) for i, c in enumerate(message.get("tool_calls") or [])
                 if isinstance(c, dict)] or None
        return Completion(
            text=text,
            model=str(body.get("model") or request.model),
            host=self.name,
            tokens_in=reported_count(body.get("prompt_eval_count")),
            tokens_out=reported_count(body.get("eval_count")),
            latency_s=time.monotonic() - started,
            finish_reason="tool_calls" if calls else reason,
            simulated=is_simulated(response),
            tool_calls=calls,
        )

    def health(self, model: str | None = None) -> HostHealth:
        """Up when ``/api/tags`` answers; ``model_present``: the model(s) are pulled there."""
        started = time.monotonic()
        probed = self._probe(f"{self.base_url}/api/tags")
        if isinstance(probed, HostHealth):
            return probed
        response, body = probed
        listed = [str(m.get("name") or m.get("model")) for m in body.get("models") or []]
        have = {normalise_model(n) for n in listed}
        wanted = [model] if model else list(self.host.models)
        missing = [m for m in wanted if normalise_model(m) not in have]
        return HostHealth(
            host=self.name,
            ok=True,
            latency_s=time.monotonic() - started,
            detail=f"model not pulled: {', '.join(missing)}" if missing else "",
            models=listed,
            model_present=(not missing) if wanted else None,
            simulated=is_simulated(response),
        )



__all__ = ["OllamaBackend", "from_ollama_call", "normalise_model", "to_ollama_call"]
