"""``regex_extract``: every match of a pattern in a text, with its named groups.

Input::

    {"text": "order 12 by ana@x.org, order 13 by bo@y.org",
     "pattern": "order (?P<id>\\d+) by (?P<email>\\S+@\\S+?)(?=,|$)",
     "flags": ["IGNORECASE"], "max_matches": 1000}

- ``text`` (required): the text to search; the payload limit
  (``limits.max_payload_bytes``) bounds it.
- ``pattern`` (required): a regular expression in Python syntax (the ``regex``
  engine, ``re``-compatible mode), at most ``limits.max_regex_chars`` long.
  Patterns that do not compile, and patterns that are plainly catastrophic
  (``(a+)+``, huge nested counts), are rejected at submit time.
- ``flags``: any of ``IGNORECASE``, ``MULTILINE``, ``DOTALL``, ``VERBOSE``,
  ``ASCII``, ``UNICODE`` (or their one-letter forms ``I M S X A U``).
- ``max_matches`` (1..10,000, default 1,000): stop after this many.

Output::

    {"matches": [{"match": "order 12 by ana@x.org", "start": 0, "end": 21,
                  "groups": {"id": "12", "email": "ana@x.org"},
                  "numbered": ["12", "ana@x.org"]}, ...],
     "count": 2, "truncated": false}

``groups`` holds the named groups (``null`` when a group took no part in the
match); ``numbered`` holds every group by number, 1 first. Offsets are in
characters. The whole scan shares one time budget (``limits.regex_timeout_s``):
past it the job fails with ``pattern timed out after Ns``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictInt, StrictStr

from ..config import FleetConfig, LimitsConfig
from ._common import RuleFailed, RuleInput, compile_pattern, parse_flags

MAX_MATCHES = 10_000


class RegexExtractInput(RuleInput):
    text: StrictStr
    pattern: StrictStr = Field(min_length=1)
    flags: list[StrictStr] = Field(default_factory=list)
    max_matches: StrictInt = Field(default=1000, ge=1, le=MAX_MATCHES)


def check(inp: RegexExtractInput, limits: LimitsConfig) -> None:
    compile_pattern(inp.pattern, parse_flags(inp.flags, "input.flags"), "input.pattern", limits)


def run(inp: RegexExtractInput, config: FleetConfig) -> dict[str, Any]:
    limits = config.limits
    compiled = compile_pattern(
        inp.pattern, parse_flags(inp.flags, "input.flags"), "input.pattern", limits
    )
    names = list(compiled.groupindex)
    matches: list[dict[str, Any]] = []
    truncated = False
    # Groups may capture overlapping text (``(?=(.*))`` copies the rest of the text at
    # every position), so the answer's size is counted as it grows, not after.
    budget = limits.rules.for_kind("regex_extract").output_bytes
    size = 0
    try:
        # One timeout for the whole scan: regex counts it across the iterator.
        for m in compiled.finditer(inp.text, timeout=limits.regex_timeout_s, concurrent=True):
            if len(matches) >= inp.max_matches:
                truncated = True
                break
            numbered = list(m.groups())
            size += 60 + len(m.group(0)) + sum(len(g) + 8 for g in numbered if g is not None)
            size += sum(len(n) + 8 + len(m.group(n) or "") for n in names)
            if size > budget:
                raise RuleFailed(
                    f"output is over {budget:,} bytes after {len(matches):,} matches, over the "
                    "output limit: limits.rules.output_bytes for regex_extract; "
                    "lower max_matches or capture less"
                )
            matches.append(
                {
                    "match": m.group(0),
                    "start": m.start(),
                    "end": m.end(),
                    "groups": {name: m.group(name) for name in names},
                    "numbered": numbered,
                }
            )
    except TimeoutError as exc:
        raise RuleFailed(f"pattern timed out after {limits.regex_timeout_s:g}s") from exc
    return {"matches": matches, "count": len(matches), "truncated": truncated}
