"""Shared guards of the rules tier: input models, text limits, safe regular expressions.

Every user-supplied pattern goes through :func:`compile_pattern`, which is run at
submit time (so a bad pattern is rejected before it reaches a queue) and again in
the worker (so a job enqueued by hand gets the same checks). Matching always uses
the ``regex`` package with a ``timeout``: a pattern that backtracks without end
becomes a clean :class:`RuleFailed`, never a worker stuck for the whole task time limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import regex
from pydantic import BaseModel, ConfigDict

from ..config import LimitsConfig
from ..errors import JobRejected, TierfleetError


class RuleFailed(TierfleetError):
    """A rules job could not produce an answer; the worker turns it into a failed Result."""

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class RuleInput(BaseModel):
    """Base of every rules payload: unknown fields are a typo, not something to ignore."""

    model_config = ConfigDict(extra="forbid")


# -- limits -------------------------------------------------------------------------

# Compiling ``(?:a{1000}){1000}`` takes half a second and grows linearly with the
# product of nested repeat counts; this bound keeps compilation in milliseconds.
MAX_REPEAT_PRODUCT = 100_000

# The regex compiler recurses per nested group; real patterns nest a handful deep.
MAX_GROUP_DEPTH = 50

# Deeper JSON than this is far past any real document and would hit Python's
# recursion limit inside jsonschema instead of failing cleanly.
MAX_JSON_DEPTH = 128


def check_text(text: str, field: str, limits: LimitsConfig) -> None:
    if len(text) > limits.max_prompt_chars:
        raise JobRejected(
            field,
            f"{len(text):,} characters, over limits.max_prompt_chars ({limits.max_prompt_chars:,})",
        )


def json_depth_over(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` nests containers deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


# -- regular expressions ------------------------------------------------------------

FLAG_NAMES: dict[str, int] = {
    "IGNORECASE": regex.IGNORECASE,
    "MULTILINE": regex.MULTILINE,
    "DOTALL": regex.DOTALL,
    "VERBOSE": regex.VERBOSE,
    "ASCII": regex.ASCII,
    "UNICODE": regex.UNICODE,
}
_FLAG_ALIASES = {
    "I": "IGNORECASE", "M": "MULTILINE", "S": "DOTALL", "X": "VERBOSE", "A": "ASCII", "U": "UNICODE"
}


def parse_flags(names: Sequence[str], field: str) -> int:
    """``["IGNORECASE", "m"]`` -> regex flag bits; unknown names are rejected by index."""
    bits = 0
    for i, raw in enumerate(names):
        name = raw.strip().upper()
        name = _FLAG_ALIASES.get(name, name)
        if name not in FLAG_NAMES:
            raise JobRejected(
                f"{field}[{i}]",
                f"unknown flag {raw!r}; use any of {', '.join(FLAG_NAMES)} (or I, M, S, X, A, U)",
            )
        bits |= FLAG_NAMES[name]
    return bits


# A group whose whole body is one repeated atom, itself repeated without bound:
# ``(a+)+``, ``(?:\w*)*``, ``([a-z]+){2,}``. Every way of splitting the run between
# the two loops is tried before a match fails, which is exponential in the plain
# ``re`` engine (jsonschema's) and needless in any engine. Atomic groups and
# possessive repeats do not backtrack, so they are left alone.
_NESTED_REPEAT = re.compile(
    r"""
    (?<!\\)\(
    (?:\?:|\?P?<[A-Za-z_]\w*>)?
    (?:\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|[^()\[\]\\|*+?{])
    (?:[*+]|\{\d*,\d*\})\??
    \)
    (?:[*+]|\{\d*,\})(?!\+)
    """,
    re.VERBOSE,
)
_COUNT = re.compile(r"\{(\d*)(?:,(\d*))?\}")


def hostile_reason(pattern: str) -> str | None:
    """A cheap static look for patterns known to explode; ``None`` when none is seen.

    This is a first line only: the ``timeout`` on every match is what actually
    bounds the time a pattern may take.
    """
    m = _NESTED_REPEAT.search(pattern)
    if m:
        return (
            f"nested unbounded repetition {m.group(0)!r} backtracks catastrophically; "
            "repeat the atom once (e.g. 'a+' instead of '(a+)+') or use a possessive/atomic form"
        )
    product, depth = _repeat_product(pattern)
    if depth > MAX_GROUP_DEPTH:
        return f"groups nest {depth} deep (limit {MAX_GROUP_DEPTH})"
    if product > MAX_REPEAT_PRODUCT:
        return (
            f"nested repeat counts multiply to {product:,} (limit {MAX_REPEAT_PRODUCT:,}); "
            "such a pattern is slow even to compile"
        )
    return None


def _repeat_product(pattern: str) -> tuple[int, int]:
    """Largest product of ``{m,n}`` counts along any nesting of groups, and the deepest nesting."""
    # frames[-1] is the largest product seen so far inside the group being read.
    frames: list[int] = [1]
    deepest = 0
    last = 1  # cost of the element just read, which a following {m,n} multiplies
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            last = 1
            continue
        if ch == "[":
            # Skip a character class: a leading ']' (or '^]') is literal.
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            last = 1
            continue
        if ch == "(":
            frames.append(1)
            deepest = max(deepest, len(frames) - 1)
            i += 1
            continue
        if ch == ")":
            inner = frames.pop() if len(frames) > 1 else 1
            last = inner
            frames[-1] = max(frames[-1], inner)
            i += 1
            continue
        if ch == "{":
            m = _COUNT.match(pattern, i)
            if m:
                count = max(int(m.group(1) or 0), int(m.group(2) or 0), 1)
                frames[-1] = max(frames[-1], last * count)
                last = last * count
                i = m.end()
                continue
        last = 1
        i += 1
    return max(frames), deepest


def compile_pattern(
    pattern: str, flags: int, field: str, limits: LimitsConfig
) -> regex.Pattern[str]:
    """Compile a user pattern with the ``regex`` engine, or raise JobRejected naming ``field``."""
    if not pattern:
        raise JobRejected(field, "pattern is empty")
    if len(pattern) > limits.max_regex_chars:
        raise JobRejected(
            field,
            f"pattern is {len(pattern):,} characters, over limits.max_regex_chars "
            f"({limits.max_regex_chars:,})",
        )
    reason = hostile_reason(pattern)
    if reason:
        raise JobRejected(field, f"pattern refused: {reason}")
    try:
        return regex.compile(pattern, flags)
    except (regex.error, OverflowError, ValueError) as exc:
        raise JobRejected(field, f"pattern does not compile: {exc}") from exc
    except RecursionError as exc:
        raise JobRejected(field, "pattern nests too deeply to compile") from exc


class RegexBudget:
    """The time a job's pattern matching may take in all, across every call it makes.

    Each call gets ``timeout=`` what is left, so one runaway match stops at the
    budget, and many quick matches share it; time spent outside matching is not
    counted.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0

    def remaining(self) -> float:
        left = self.seconds - self.spent
        if left <= 0:
            raise TimeoutError("regex timed out")
        return left

    def search(
        self, pattern: regex.Pattern[str] | str, text: str, flags: int = 0
    ) -> regex.Match[str] | None:
        started = time.monotonic()
        try:
            if isinstance(pattern, str):
                return regex.search(pattern, text, flags, timeout=self.remaining())
            return pattern.search(text, timeout=self.remaining())
        finally:
            self.spent += time.monotonic() - started

    def failure(self, what: str = "pattern") -> RuleFailed:
        return RuleFailed(f"{what} timed out after {self.seconds:g}s")


# -- field paths ----------------------------------------------------------------------


def field_path(prefix: str, loc: Sequence[int | str]) -> str:
    """``("items", 3, "x")`` under ``input`` -> ``input.items[3].x``."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
