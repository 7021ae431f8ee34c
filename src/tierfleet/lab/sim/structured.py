"""Deterministic structured answers for the simulated hosts: a JSON value valid for a
JSON Schema, and a function call for a request that offers tools.

What a real model does with constrained decoding (Ollama ``format``, OpenAI
``json_schema``) and with ``tools``, reduced to something tests can rely on: the same
request always gets the same value; every property of an object is filled, enums
take their first value, numbers sit inside their bounds, ``$ref`` into ``$defs``
is followed (pydantic's schemas, which ``client.beta.chat.completions.parse`` sends,
use them).
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["call_for", "instance_for"]


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    seen = 0
    while isinstance(ref, str) and ref.startswith("#/") and seen < 32:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = target if isinstance(target, dict) else {}
        ref = node.get("$ref")
        seen += 1
    return node


def instance_for(schema: Any, rng: random.Random, words: list[str], *,
                 root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value valid for ``schema`` (the common keywords), built from the prompt's words."""
    if not isinstance(schema, dict):
        return {}
    root = root if root is not None else schema
    node = _resolve(schema, root)
    if depth > 8:
        return None
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if node.get(key):
            branch = next((b for b in node[key] if _resolve(b, root).get("type") != "null"),
                          node[key][0])
            return instance_for(branch, rng, words, root=root, depth=depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in node else "string"
    word = rng.choice(words) if words else "simulated"
    if kind == "object":
        props = node.get("properties") or {}
        return {name: instance_for(sub, rng, words, root=root, depth=depth + 1)
                for name, sub in props.items()}
    if kind == "array":
        n = max(int(node.get("minItems") or 1), 1)
        n = min(n, int(node.get("maxItems") or n))
        return [instance_for(node.get("items") or {}, rng, words, root=root, depth=depth + 1)
                for _ in range(n)]
    if kind in ("integer", "number"):
        lo = node.get("minimum", node.get("exclusiveMinimum", 0))
        hi = node.get("maximum", node.get("exclusiveMaximum", lo + 100))
        value = rng.randint(int(lo) + 1, max(int(lo) + 1, int(hi) - 1)) if hi - lo > 2 \
            else int(lo) if "exclusiveMinimum" not in node else int(lo) + 1
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    text = word
    lo = int(node.get("minLength") or 0)
    if len(text) < lo:
        text = (text + " ") * (lo // max(1, len(text)) + 1)
    if node.get("maxLength"):
        text = text[: int(node["maxLength"])]
    return text


def call_for(tools: list[Any], last_user: str, rng: random.Random,
             words: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(function name, arguments) the simulated model calls: the tool the prompt names,
    else the first one; None when no tool is a function."""
    functions = [t.get("function") for t in tools
                 if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    functions = [f for f in functions if f.get("name")]
    if not functions:
        return None
    low = last_user.lower()
    chosen = next((f for f in functions if str(f["name"]).lower() in low), functions[0])
    params = chosen.get("parameters") or {"type": "object", "properties": {}}
    args = instance_for(params, rng, words)
    return str(chosen["name"]), args if isinstance(args, dict) else {}
