"""The rules tier: jobs answered by plain code, with no model and no cost.

Five kinds, one small module each (its docstring documents the input and output):

- ``dedupe``: exact and near-duplicate texts in a list.
- ``json_validate``: a document against a JSON Schema, every error with its path.
- ``regex_extract``: all matches of a pattern, with named groups, under a timeout.
- ``log_slice``: log lines by level, time window, pattern and line budget.
- ``keyword_route``: the first keyword rule that matches a text, else a default label.

Two calls make the tier:

- :func:`validate` at submit time parses a job's ``input`` into the kind's input
  model and runs the kind's checks (schemas, patterns, windows, sizes); anything
  wrong raises :class:`~tierfleet.errors.JobRejected` naming the field
  (``input.schema.type``, ``input.pattern``, ``input.items[3]``).
- :func:`execute` in the worker validates again (a message may have been
  enqueued by hand) and runs the kind. Whatever goes wrong comes out as
  :class:`RuleFailed` with a clear message, never as another exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ..config import FleetConfig, LimitsConfig
from ..errors import JobRejected
from ..inputs import safe_text, scan
from ..jobs import RULES_KINDS, Kind
from . import dedupe, json_validate, keyword_route, log_slice, regex_extract
from ._bounds import Sandbox, run_bounded
from ._common import RuleFailed, RuleInput, field_path

__all__ = ["EXECUTORS", "Executor", "RuleFailed", "execute", "input_schema", "validate"]


@dataclass(frozen=True, slots=True)
class Executor:
    kind: Kind
    input_model: type[RuleInput]
    check: Callable[[Any, LimitsConfig], None]
    run: Callable[[Any, FleetConfig], dict[str, Any]]
    summary: str


EXECUTORS: dict[Kind, Executor] = {
    Kind.DEDUPE: Executor(
        Kind.DEDUPE, dedupe.DedupeInput, dedupe.check, dedupe.run,
        "exact and normalised near-duplicates of a list of texts",
    ),
    Kind.JSON_VALIDATE: Executor(
        Kind.JSON_VALIDATE, json_validate.JsonValidateInput, json_validate.check,
        json_validate.run, "a JSON document against a JSON Schema, errors with their paths",
    ),
    Kind.REGEX_EXTRACT: Executor(
        Kind.REGEX_EXTRACT, regex_extract.RegexExtractInput, regex_extract.check,
        regex_extract.run, "all matches of a pattern, with named groups",
    ),
    Kind.LOG_SLICE: Executor(
        Kind.LOG_SLICE, log_slice.LogSliceInput, log_slice.check, log_slice.run,
        "log lines by level, time window, pattern and line budget",
    ),
    Kind.KEYWORD_ROUTE: Executor(
        Kind.KEYWORD_ROUTE, keyword_route.KeywordRouteInput, keyword_route.check,
        keyword_route.run, "the first matching keyword rule's label, else a default",
    ),
}
assert set(EXECUTORS) == set(RULES_KINDS)


def _executor(kind: Kind | str) -> Executor:
    try:
        k = Kind(kind)
    except ValueError:
        raise JobRejected("kind", f"unknown kind {kind!r}") from None
    if k not in EXECUTORS:
        raise JobRejected(
            "kind", f"{k.value} is not a rules kind (rules kinds: {', '.join(sorted(RULES_KINDS))})"
        )
    return EXECUTORS[k]


def _describe(errors: list[Any]) -> tuple[str, str]:
    """The first pydantic error as (field, message), with a count of the rest."""
    def text(e: dict[str, Any]) -> str:
        known = {"missing": "field required", "extra_forbidden": "unknown field"}
        return safe_text(known.get(e["type"]) or str(e["msg"]).removeprefix("Value error, "))

    first = errors[0]
    field = field_path("input", first["loc"])
    msg = text(first)
    if len(errors) > 1:
        others = "; ".join(f"{field_path('input', e['loc'])}: {text(e)}" for e in errors[1:4])
        more = f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""
        msg = f"{msg}; also {others}{more}"
    return field, msg


def validate(kind: Kind | str, payload: Any, limits: LimitsConfig) -> BaseModel:
    """Parse and check a rules job's ``input``; raise JobRejected naming the bad field."""
    ex = _executor(kind)
    if payload is None:
        raise JobRejected("input", f"a {ex.kind.value} job needs an 'input' object")
    if not isinstance(payload, Mapping):
        raise JobRejected("input", f"must be a JSON object, not {type(payload).__name__}")
    # Plain JSON only, before anything recursive sees it (a message may have been
    # enqueued by hand, so the worker runs this too).
    scan(payload, "input", max_depth=limits.max_json_depth, max_bytes=limits.max_payload_bytes)
    size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limits.max_payload_bytes:
        raise JobRejected(
            "input",
            f"payload is {size:,} bytes, "
            f"over limits.max_payload_bytes ({limits.max_payload_bytes:,})",
        )
    try:
        model = ex.input_model.model_validate(dict(payload))
    except ValidationError as exc:
        field, msg = _describe(exc.errors(include_url=False))
        raise JobRejected(field, msg) from exc
    try:
        ex.check(model, limits)
    except JobRejected:
        raise
    except RecursionError as exc:
        raise JobRejected("input", "nested too deeply to check") from exc
    except Exception as exc:
        # The submitter gets a rejection either way; a checker bug must not become a 500.
        raise JobRejected("input", f"could not be checked: {type(exc).__name__}: {exc}") from exc
    return model


def execute(kind: Kind | str, payload: Any, config: FleetConfig) -> dict[str, Any]:
    """Run a rules job and return its JSON-ready output; every failure is a RuleFailed.

    The run is bounded in CPU time, memory and output bytes by ``[limits.rules]``
    (see :mod:`tierfleet.rules._bounds`); past a bound it fails naming the limit.
    """
    name = str(getattr(kind, "value", kind))
    try:
        ex = _executor(kind)
    except JobRejected as exc:
        raise RuleFailed(f"rejected input: {exc}", kind=name) from exc
    bounds = config.limits.rules.for_kind(ex.kind.value)
    try:
        # Plain JSON before it crosses to the helper (the scan is bounded by the size limit).
        scan(payload, "input", max_depth=config.limits.max_json_depth,
             max_bytes=config.limits.max_payload_bytes)
        return run_bounded(
            lambda: _execute(kind, payload, config), bounds, _SANDBOX,
            ex.kind.value, payload, config,
        )
    except JobRejected as exc:
        raise RuleFailed(f"rejected input: {exc}", kind=name) from exc
    except RuleFailed as exc:
        exc.kind = exc.kind or name
        raise


def _execute(kind: Kind | str, payload: Any, config: FleetConfig) -> dict[str, Any]:
    """The unbounded run: validate again (a message may have been enqueued by hand), then run."""
    name = str(getattr(kind, "value", kind))
    try:
        model = validate(kind, payload, config.limits)
        return _executor(kind).run(model, config)
    except RuleFailed as exc:
        exc.kind = exc.kind or name
        raise
    except JobRejected as exc:
        raise RuleFailed(f"rejected input: {exc}", kind=name) from exc
    except TimeoutError as exc:
        raise RuleFailed(
            f"pattern timed out after {config.limits.regex_timeout_s:g}s", kind=name
        ) from exc
    except RecursionError as exc:
        raise RuleFailed("input nested too deeply to process", kind=name) from exc
    except MemoryError:
        # Left to the bound (rules._bounds): it names limits.rules.memory_mb and
        # replaces the helper process whose heap ran out.
        raise
    except Exception as exc:
        # A bug or a case nobody foresaw: still a failed job, not a dead worker.
        raise RuleFailed(
            f"{name} failed unexpectedly: {type(exc).__name__}: {exc}", kind=name
        ) from exc


# One per process; its helpers are forked on first use (after any pool fork).
_SANDBOX = Sandbox(_execute)


def input_schema(kind: Kind | str) -> dict[str, Any]:
    """The JSON Schema of a rules kind's ``input`` (for API docs and clients)."""
    return _executor(kind).input_model.model_json_schema(by_alias=True)
