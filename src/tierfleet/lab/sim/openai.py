"""The OpenAI-compatible wire format, simulated: any ``.../chat/completions`` and ``.../models``.

So both ``/v1`` (a provider, llama.cpp's server) and Ollama's own ``/v1`` work.
Errors have OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape;
``stream: true`` is answered as server-sent events.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from .answers import pieces, prompt_tokens
from .wire import Exchange, Route


def text_of(content: Any) -> tuple[str, int]:
    """OpenAI content (string or parts) -> (text, number of images)."""
    if isinstance(content, str):
        return content, 0
    if isinstance(content, list):
        texts, images = [], 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text") or ""))
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                images += 1
        return "\n".join(texts), images
    return "", 0


def error(
    ex: Exchange, status: int, message: str, etype: str, code: str | None, param: str | None = None
) -> None:
    ex.send(status, error_body(message, etype, code, param))


def models(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    data = [
        {"id": m.name, "object": "model", "created": 1_767_225_600, "owned_by": "tierfleet-sim"}
        for m in host.models.values()
    ]
    ex.send(200, {"object": "list", "data": data})


def chat(ex: Exchange, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
    host = ex.host
    if not isinstance(body, dict) or not body.get("model"):
        error(ex, 400, "you must provide a model parameter", "invalid_request_error", None, "model")
        return
    name = str(body["model"])
    model = host.find_model(name)
    if model is None:
        error(ex,
            404,
            f"The model `{name}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )
        return
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        error(ex,
            400, "messages must be a non-empty array", "invalid_request_error", None, "messages"
        )
        return
    messages = []
    for m in raw:
        text, images = text_of(m.get("content"))
        messages.append({"role": m.get("role"), "content": text, "images": ["x"] * images})
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    max_tokens = int(limit) if isinstance(limit, int) and limit > 0 else None
    fmt = body.get("response_format") or {}
    json_output = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    n_in = prompt_tokens(messages)
    if host.take("context", "openai_chat") is not None or n_in > model.context_window:
        error(ex,
            400,
            f"This model's maximum context length is {model.context_window} tokens. However, "
            f"your messages resulted in {n_in} tokens. "
            "Please reduce the length of the messages.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        )
        return
    schema = None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else None
    tools = body.get("tools") if isinstance(body.get("tools"), list) else None
    if body.get("tool_choice") == "none":
        tools = None
    answer = ex.answer(
        model, messages, json_output=json_output, max_tokens=max_tokens, route="openai_chat",
        schema=schema, tools=tools, stream=bool(body.get("stream")) and tools is None,
    )
    message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.tool_call is not None:
        call_id = "call_" + hashlib.sha256(json.dumps(answer.tool_call).encode()).hexdigest()[:20]
        message["content"] = None
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": {
            "name": answer.tool_call[0], "arguments": json.dumps(answer.tool_call[1])}}]
    created = int(time.time())
    cid = (
        "chatcmpl-sim" + hashlib.sha256(f"{created}{answer.text}{uuid.uuid4()}".encode()).hexdigest()[:24]
    )
    payload: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": name,
        "system_fingerprint": "fp_tierfleet_sim",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": answer.tokens_in,
            "completion_tokens": answer.tokens_out,
            "total_tokens": answer.tokens_in + answer.tokens_out,
        },
    }
    if host.take("no_counts", "openai_chat") is not None:
        payload.pop("usage")
    if not body.get("stream"):
        ex.send(200, payload)
        return
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name}
    if answer.tool_call is not None:
        # Tool calls arrive whole, in one delta (as many servers send them).
        first = {**base, "choices": [{"index": 0, "finish_reason": None, "delta": {
            "role": "assistant", "content": None, "tool_calls": [
                {"index": 0, **message["tool_calls"][0]}]}}]}
        texts: list[dict[str, Any]] = [first]
    else:
        texts = [{**base, "choices": [{"index": 0, "finish_reason": None, "delta": (
            {"role": "assistant", "content": piece} if i == 0 else {"content": piece})}]}
            for i, piece in enumerate(pieces(answer.text) or [""])]
    ex.stream_start("text/event-stream")
    for chunk in texts:
        ex.stream_write(f"data: {json.dumps(chunk)}\n\n", answer.per_token_s)
    end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]}
    ex.stream_write(f"data: {json.dumps(end)}\n\n")
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage") and "usage" in payload:
        ex.stream_write(f"data: {json.dumps({**base, 'choices': [], 'usage': payload['usage']})}\n\n")
    ex.stream_write("data: [DONE]\n\n")


def error_body(message: str, etype: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object, for answers the server decides (auth, injected faults)."""
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def is_route(method: str, path: str) -> tuple[str, Route] | None:
    """This protocol's route for a path, by its tail (any prefix: ``/v1``, ``/openai/v1``)."""
    if path.endswith("/chat/completions") and method == "POST":
        return "openai_chat", chat
    if path.endswith("/models") and method == "GET":
        return "models", models
    return None
