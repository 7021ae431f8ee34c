"""What a simulated model says and how long it takes to say it.

Everything is derived from a hash of (model, messages), so the same request
always gets the same answer, token counts and latency. Latency is
``base + per_token * tokens_out``, times a global scale factor, with the
defaults taken from measurements on real machines: a 4B model
answers a short summary in ~0.3 s, a 30B code model in 8-12 s, a vision model
in 4-13 s, an 8B reasoning model in 5-8 s.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any

from ... import tokens
from .structured import call_for, instance_for

# Ollama and llama.cpp charge a vision prompt a few hundred tokens per image.
IMAGE_TOKENS = 256
# Chat templates wrap each message in a few special tokens.
PER_MESSAGE_TOKENS = 4


@dataclass(frozen=True)
class Profile:
    """How one model behaves: latency range before the first token, seconds per output token,
    and how long its answers usually are."""

    base_s: tuple[float, float]
    per_token_s: float
    out_tokens: tuple[int, int]


PROFILES: dict[str, Profile] = {
    "small": Profile((0.12, 0.22), 0.0015, (25, 70)),  # <= 4B: ~0.3 s a short answer
    "medium": Profile((0.8, 1.6), 0.012, (40, 140)),  # 7-14B chat models
    "large": Profile((6.5, 9.0), 0.018, (90, 190)),  # 30B+: 8-12 s
    "reasoning": Profile((3.8, 5.5), 0.012, (80, 200)),  # 8B reasoning: 5-8 s
    "vision": Profile((3.2, 10.5), 0.012, (50, 160)),  # vision: 4-13 s
    "paid": Profile((0.8, 2.0), 0.01, (60, 180)),  # a provider over the internet
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bm])\b", re.I)


def profile_for(model: str, *, vision: bool = False) -> Profile:
    """Pick a profile from the model's name (and the config's vision flag)."""
    name = model.lower()
    if vision or "vision" in name or "-vl" in name or "llava" in name:
        return PROFILES["vision"]
    if "r1" in name or "reason" in name or "qwq" in name:
        return PROFILES["reasoning"]
    sizes = [float(n) / (1000.0 if unit.lower() == "m" else 1.0) for n, unit in _SIZE.findall(name)]
    if sizes:
        size = max(sizes)
        if size <= 4.5:
            return PROFILES["small"]
        if size < 20:
            return PROFILES["medium"]
        return PROFILES["large"]
    if any(p in name for p in ("gpt", "claude", "gemini", "sonnet", "opus", "haiku", "o3", "o4")):
        return PROFILES["paid"]
    return PROFILES["medium"]


@dataclass(frozen=True)
class Answer:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str  # "stop", "length" or "tool_calls"
    latency_s: float  # already scaled
    # A function call instead of text: (name, arguments), for requests offering tools.
    tool_call: tuple[str, dict[str, Any]] | None = None
    per_token_s: float = 0.0  # already scaled: a stream spends it between tokens


def pieces(text: str) -> list[str]:
    """The answer as the model emits it, one token's text at a time."""
    enc = tokens.encoding()
    out: list[str] = []
    pending: list[int] = []
    for tid in enc.encode(text, disallowed_special=()):
        pending.append(tid)
        piece = enc.decode(pending)
        if "\ufffd" not in piece:  # a multi-byte character spans several tokens
            out.append(piece)
            pending = []
    if pending:
        out.append(enc.decode(pending))
    return out


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    texts = [str(m.get("content") or "") for m in messages]
    images = sum(len(m.get("images") or []) for m in messages)
    return sum(tokens.count_many(texts)) + PER_MESSAGE_TOKENS * len(messages) + IMAGE_TOKENS * images


def _seed(model: str, messages: list[dict[str, Any]]) -> int:
    h = hashlib.sha256(model.encode())
    for m in messages:
        h.update(b"\x00" + str(m.get("role")).encode() + b"\x00" + str(m.get("content")).encode())
    return int.from_bytes(h.digest()[:8], "big")


_FILLER = (
    "the request",
    "the main point",
    "in short",
    "as noted",
    "the key issue",
    "next steps",
    "overall",
    "the user",
    "this means",
    "for now",
)
_NEUTRAL = (
    "this",
    "request",
    "looks",
    "simple",
    "answer",
    "details",
    "follow",
    "below",
    "first",
    "check",
    "settings",
    "then",
    "try",
    "again",
    "should",
    "work",
    "now",
    "note",
    "that",
)
_CLASSIFY = re.compile(r"\b(classif\w*|categor\w*|label\w*|triage)\b", re.I)


def _prose(rng: random.Random, words: list[str], target: int, lead: str) -> str:
    """Sentences built from the prompt's own words until ``target`` tokens."""
    pool = list(words)
    if len(set(pool)) < 8:
        # Short prompts: pad the vocabulary so the answer does not repeat one word.
        pool += list(_NEUTRAL)
    sentences: list[str] = []
    text = lead
    while tokens.count(text) < target:
        n = rng.randint(7, 13)
        picked = [rng.choice(pool) for _ in range(n)]
        if rng.random() < 0.5:
            picked.insert(rng.randint(0, len(picked)), rng.choice(_FILLER))
        sentence = " ".join(picked)
        sentences.append(sentence[:1].upper() + sentence[1:] + ".")
        text = lead + " ".join(sentences)
    return text


def _truncate(text: str, limit: int) -> str:
    enc = tokens.encoding()
    ids = enc.encode(text, disallowed_special=())
    return enc.decode(ids[:limit])


def compose(
    model: str,
    messages: list[dict[str, Any]],
    *,
    json_output: bool = False,
    max_tokens: int | None = None,
    vision: bool = False,
    scale: float = 1.0,
    schema: dict[str, Any] | None = None,
    tools: list[Any] | None = None,
) -> Answer:
    """The simulated answer to a chat request, labelled as simulated.

    Plain text starts with ``[simulated <model>]``; a JSON answer (valid JSON unless
    ``max_tokens`` cut it, as a real model's would be) carries ``"simulated": true``.
    """
    seed = _seed(model, messages)
    rng = random.Random(seed)
    profile = profile_for(model, vision=vision)
    last = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]{2,}", last)][:400]
    lo, hi = profile.out_tokens
    target = rng.randint(lo, hi)
    classify = bool(_CLASSIFY.search(last))
    label = rng.choice(words) if words else "other"
    last_role = str(messages[-1].get("role")) if messages else ""
    call = call_for(tools, last, rng, words) if tools and last_role != "tool" else None
    if call is not None:
        # The model calls a function: no text; the arguments are what it "produced".
        produced = tokens.count(json.dumps(call[1]))
        base = profile.base_s[0] + rng.random() * (profile.base_s[1] - profile.base_s[0])
        return Answer(text="", tokens_in=prompt_tokens(messages), tokens_out=max(1, produced),
                      finish_reason="tool_calls",
                      latency_s=(base + profile.per_token_s * produced) * scale, tool_call=call)
    if last_role == "tool":
        # Answering with a tool's result: say what the tool said.
        said = " ".join(str(messages[-1].get("content") or "").split())[:200]
        text = f"[simulated {model}] The tool answered: {said}"
    elif schema is not None:
        text = json.dumps(instance_for(schema, rng, words), ensure_ascii=False)
    elif json_output:
        body: dict[str, Any] = {"simulated": True, "model": model}
        if classify:
            body["label"] = label
            body["confidence"] = round(0.55 + rng.random() * 0.4, 2)
        else:
            body["answer"] = _prose(rng, words, max(8, target // 2), "")
        body["digest"] = f"{seed & 0xFFFFFFFF:08x}"
        text = json.dumps(body, ensure_ascii=False)
    elif classify:
        text = f"[simulated {model}] {label}"
    else:
        # Echo the start of the prompt so a reader can tell which request this answers.
        gist = " ".join(last.split()[:10])
        text = _prose(rng, words, target, f"[simulated {model}] Re: {gist}. ")
    produced = tokens.count(text)
    reason = "stop"
    if max_tokens is not None and produced > max_tokens:
        text = _truncate(text, max_tokens)
        produced = max_tokens
        reason = "length"
    base = profile.base_s[0] + rng.random() * (profile.base_s[1] - profile.base_s[0])
    latency = (base + profile.per_token_s * produced) * scale
    return Answer(
        text=text,
        tokens_in=prompt_tokens(messages),
        tokens_out=produced,
        finish_reason=reason,
        latency_s=latency,
        per_token_s=profile.per_token_s * scale,
    )
