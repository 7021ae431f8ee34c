"""Ollama's wire format, simulated: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/chat``.

Shapes as Ollama's API documents them: a streamed chat is NDJSON (one chunk with
the text, then the final record with the counts); ``truncate: false`` turns a
prompt over the window into a 400, otherwise the prompt is cut to fit, as
Ollama does by default.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .answers import pieces, prompt_tokens
from .wire import Exchange, HttpError, ModelInfo, Route, now_iso, ollama_name

SIM_VERSION = "0.12.6"


def root(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    ex.send(200, "Ollama is running", content_type="text/plain; charset=utf-8")


def version(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    ex.send(200, {"version": SIM_VERSION})


def _tag_entry(m: ModelInfo) -> dict[str, Any]:
    name = ollama_name(m.name)
    digest = hashlib.sha256(name.encode()).hexdigest()
    size_part = name.split(":")[-1].upper() if any(c.isdigit() for c in name.split(":")[-1]) else ""
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-01-01T00:00:00.000000000Z",
        "size": 2_019_393_189,
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": name.split(":")[0].split("-")[0],
            "families": [name.split(":")[0].split("-")[0]],
            "parameter_size": size_part,
            "quantization_level": "Q4_K_M",
            "context_length": m.context_window,
        },
        "capabilities": ["completion", "vision"] if m.vision else ["completion"],
    }


def tags(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    ex.send(200, {"models": [_tag_entry(m) for m in host.models.values()]})


def ps(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    models = []
    for m in host.models.values():
        entry = _tag_entry(m)
        entry.update({"expires_at": "2099-01-01T00:00:00Z", "size_vram": entry["size"]})
        models.append(entry)
    ex.send(200, {"models": models})


def chat(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    if not isinstance(body, dict) or not body.get("model"):
        raise HttpError(400, "model is required")
    name = str(body["model"])
    model = host.find_model(name)
    if model is None:
        raise HttpError(404, f"model '{name}' not found")
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise HttpError(400, "messages must be a list of objects")
    if not messages:
        ex.send(
            200,
            {
                "model": name,
                "created_at": now_iso(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": "load",
                "done": True,
            },
        )
        return
    options = body.get("options") or {}
    num_predict = options.get("num_predict")
    max_tokens = int(num_predict) if isinstance(num_predict, int) and num_predict > 0 else None
    window = int(options.get("num_ctx") or model.context_window)
    n_in = prompt_tokens(messages)
    if host.take("context", "chat") is not None or n_in > window:
        if body.get("truncate", True) is False or n_in <= window:
            raise HttpError(400, "the input length exceeds the context length")
        n_in = window  # Ollama's default: the prompt is silently cut to fit
    fmt = body.get("format")
    tools = body.get("tools") if isinstance(body.get("tools"), list) else None
    answer = ex.answer(
        model,
        messages,
        json_output=fmt is not None,
        max_tokens=max_tokens,
        route="chat",
        schema=fmt if isinstance(fmt, dict) else None,
        tools=tools,
        stream=body.get("stream", True) is not False,
    )
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.tool_call is not None:
        # Ollama's shape: arguments as an object; it says "stop" even when it called one.
        message["tool_calls"] = [{"function": {"name": answer.tool_call[0],
                                               "arguments": answer.tool_call[1]}}]
    total_ns = max(int(answer.latency_s * 1e9), 1000)
    final: dict[str, Any] = {
        "model": name,
        "created_at": now_iso(),
        "message": message,
        "done_reason": "stop" if answer.tool_call is not None else answer.finish_reason,
        "done": True,
        "total_duration": total_ns,
        "load_duration": total_ns // 100,
        "prompt_eval_count": min(answer.tokens_in, n_in),
        "prompt_eval_duration": total_ns // 5,
        "eval_count": answer.tokens_out,
        "eval_duration": total_ns - total_ns // 5 - total_ns // 100,
    }
    if host.take("no_counts", "chat") is not None:
        # Go's omitempty: a cached prompt has no prompt_eval_count at all.
        final.pop("prompt_eval_count")
        final.pop("eval_count")
    if body.get("stream", True) is False:
        ex.send(200, final)
        return
    # Token by token at the model's speed, then the final record with the counts.
    ex.stream_start("application/x-ndjson")
    for piece in pieces(answer.text):
        chunk = {"model": name, "created_at": now_iso(),
                 "message": {"role": "assistant", "content": piece}, "done": False}
        ex.stream_write(json.dumps(chunk) + "\n", answer.per_token_s)
    final["message"] = {**message, "content": ""}
    ex.stream_write(json.dumps(final) + "\n")


# (method, path) -> (route name, answer); the route name is what the counters and faults use.
ROUTES: dict[tuple[str, str], tuple[str, Route]] = {
    ("GET", "/"): ("root", root),
    ("HEAD", "/"): ("root", root),
    ("GET", "/api/version"): ("version", version),
    ("GET", "/api/tags"): ("tags", tags),
    ("HEAD", "/api/tags"): ("tags", tags),
    ("GET", "/api/ps"): ("ps", ps),
    ("POST", "/api/chat"): ("chat", chat),
}
