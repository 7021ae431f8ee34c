"""``keyword_route``: the label of the first rule whose keywords appear in a text.

Input::

    {"text": "Outlook keeps asking for my password",
     "rules": [{"label": "vpn", "any": ["vpn", "anyconnect"]},
               {"label": "email", "any": ["outlook", "email", "e-mail"]}],
     "default": "review"}

- ``text`` (required): a ticket, message or prompt, at most
  ``limits.max_prompt_chars`` characters, like any prompt.
- ``rules`` (optional): tried in order; the first with a keyword in the text
  wins. Without it, ``[[rules.keyword_routes]]`` from the fleet config is used.
- ``default`` (optional): the label when no rule matches; without it,
  ``rules.default_label`` from the config.

A keyword matches as a whole word or phrase, ignoring case (full Unicode case
folding and NFKC, so ``VPN``, ``vpn`` and its full-width form are the same), and
any run of spaces in a phrase matches any run of whitespace. ``mail`` does not
match ``email``; a keyword may start or end with a symbol (``c++``, ``.net``), and
then only a letter or digit next to it stops the match (``asp.net`` is not ``.net``).

Output::

    {"label": "email", "matched": "outlook", "rule": 1, "default": false}

``matched`` is the keyword as written in the rule (the one found earliest in the
text), ``rule`` its rule's index; both are ``null`` when the default was used.
Every text gets a label: the kind never fails on its text.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

from pydantic import Field, StrictStr

from ..config import FleetConfig, LimitsConfig
from ..errors import JobRejected
from ._common import RuleInput, check_text


class RouteRule(RuleInput):
    label: StrictStr = Field(min_length=1, max_length=200)
    any: list[StrictStr] = Field(min_length=1, description="keywords or phrases")


class KeywordRouteInput(RuleInput):
    text: StrictStr
    rules: list[RouteRule] | None = Field(default=None, description="default: the config's")
    default: StrictStr | None = Field(default=None, min_length=1, max_length=200)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _keyword_regex(keyword: str) -> str:
    return r"\s+".join(re.escape(word) for word in _fold(keyword).split())


@lru_cache(maxsize=512)
def _rule_matcher(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = [_keyword_regex(k) for k in keywords]
    parts = sorted({p for p in parts if p}, key=len, reverse=True)
    if not parts:
        return None
    # Lookarounds, not \b: keywords may start or end with a non-word character (c++, .net).
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)")


def check(inp: KeywordRouteInput, limits: LimitsConfig) -> None:
    check_text(inp.text, "input.text", limits)
    for i, rule in enumerate(inp.rules or []):
        for j, keyword in enumerate(rule.any):
            if not keyword.strip():
                raise JobRejected(f"input.rules[{i}].any[{j}]", "keyword is blank")


def route(
    text: str, rules: list[tuple[str, list[str]]], default: str
) -> dict[str, Any]:
    """The first rule (label, keywords) with a keyword in ``text``, else ``default``."""
    folded = _fold(text)
    for index, (label, keywords) in enumerate(rules):
        matcher = _rule_matcher(tuple(keywords))
        if matcher is None:
            continue
        m = matcher.search(folded)
        if m is None:
            continue
        hit = " ".join(m.group(0).split())
        matched = next(
            (k for k in keywords if re.fullmatch(_keyword_regex(k), m.group(0))),
            hit,
        )
        return {"label": label, "matched": matched, "rule": index, "default": False}
    return {"label": default, "matched": None, "rule": None, "default": True}


def run(inp: KeywordRouteInput, config: FleetConfig) -> dict[str, Any]:
    if inp.rules is not None:
        rules = [(r.label, list(r.any)) for r in inp.rules]
    else:
        rules = [(r.label, list(r.any)) for r in config.rules.keyword_routes]
    default = inp.default if inp.default is not None else config.rules.default_label
    return route(inp.text, rules, default)
