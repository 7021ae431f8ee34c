"""``json_validate``: check a JSON document against a JSON Schema; every error with its path.

Input::

    {"document": {"id": "x", "tags": [1]},          # any JSON value, or a JSON text
     "schema": {"type": "object", "required": ["id", "name"],
                "properties": {"id": {"type": "integer"},
                               "tags": {"type": "array", "items": {"type": "string"}}}},
     "parse": true, "formats": false, "max_errors": 100}

- ``document`` (required): the value to check. A string is read as JSON text
  (the usual shape of a model's answer) unless ``parse`` is false, in which case
  the string itself is the value.
- ``schema`` (required): a JSON Schema (object or boolean). Draft 2020-12 unless
  its ``$schema`` names another known draft (3, 4, 6, 7, 2019-09). An invalid
  schema, an unknown ``$schema``, a ``#/...`` reference to nothing, or a
  ``pattern`` that is refused (see ``rules._common``) is rejected at submit time.
  References are resolved inside the schema and against the standard
  meta-schemas only: nothing is fetched over the network.
- ``formats`` (bool, default false): also assert ``format`` (email, date, ipv4, ...)
  where a checker is available; by default ``format`` is an annotation, as the
  2020-12 specification says.
- ``max_errors`` (1..10,000, default 100): stop collecting after this many.

Output::

    {"valid": false,
     "errors": [{"path": "$.id", "message": "'x' is not of type 'integer'",
                 "keyword": "type", "schema_path": "/properties/id/type"},
                {"path": "$", "message": "'name' is a required property", ...},
                {"path": "$.tags[0]", ...}],
     "count": 3, "truncated": false,
     "dialect": "https://json-schema.org/draft/2020-12/schema"}

A string document that is not JSON gives ``valid: false`` with one error at
path ``$`` and keyword ``parse``. Schema ``pattern`` keywords run under the job's
regex time budget (``limits.regex_timeout_s``); past it the job fails with
``schema pattern timed out after Ns``.
"""

from __future__ import annotations

import contextvars
import importlib
import re
import reprlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import regex
from jsonschema import validators
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as META_SCHEMAS
from pydantic import Field, StrictBool, StrictInt, field_validator
from referencing.exceptions import Unresolvable

from ..config import FleetConfig, LimitsConfig
from ..errors import JobRejected
from ..inputs import loads_strict, scan
from ._common import (
    RegexBudget,
    RuleFailed,
    RuleInput,
    compile_pattern,
)

DEFAULT_DIALECT = validators.Draft202012Validator
_MESSAGE_CHARS = 500


class JsonValidateInput(RuleInput):
    document: Any = Field(description="the JSON value to check, or JSON text when parse is true")
    schema_: Any = Field(alias="schema", description="a JSON Schema: an object or a boolean")
    parse: StrictBool = Field(default=True, description="read a string document as JSON text")
    formats: StrictBool = Field(default=False, description="assert 'format' keywords")
    max_errors: StrictInt = Field(default=100, ge=1, le=10_000)

    @field_validator("schema_")
    @classmethod
    def _object_or_boolean(cls, v: Any) -> Any:
        # Checked by hand: a pydantic union would name its members in the error path.
        if not isinstance(v, dict | bool):
            raise ValueError(f"a JSON Schema is an object or a boolean, not {type(v).__name__}")
        return v


# -- guarding jsonschema's own regex calls ---------------------------------------------
#
# jsonschema evaluates ``pattern``, ``patternProperties`` and the property-name side
# of ``additionalProperties``/``unevaluatedProperties`` with the stdlib ``re``, which
# has no timeout. Those calls all go through the name ``re`` in three of its modules;
# pointing that name at a stand-in whose ``search`` uses the ``regex`` engine with the
# current job's time budget bounds every one of them. Outside a json_validate job the
# stand-in calls the real ``re.search``, so nothing else in the process changes.

_BUDGET: contextvars.ContextVar[RegexBudget | None] = contextvars.ContextVar(
    "tierfleet_json_validate_budget", default=None
)


class _BudgetedRe(ModuleType):
    def __init__(self) -> None:
        super().__init__("re")

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)

    @staticmethod
    def search(pattern: Any, string: str, flags: int = 0) -> Any:
        budget = _BUDGET.get()
        if budget is None or not isinstance(pattern, str):
            return re.search(pattern, string, flags)
        return budget.search(pattern, string, flags)


_GUARD = _BudgetedRe()
_GUARDED = False


def _install_guard() -> None:
    global _GUARDED
    if _GUARDED:
        return
    for name in ("jsonschema._keywords", "jsonschema._utils", "jsonschema._legacy_keywords"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(mod, "re", None) is re:
            mod.re = _GUARD  # type: ignore[attr-defined]
    _GUARDED = True


# -- submit-time checks ----------------------------------------------------------------

# Keywords whose values are data, not subschemas: a "$ref" or "pattern" key inside
# them means nothing.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})


def _walk_schema(node: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema object in ``node`` with its field path (``properties`` keys included)."""
    stack: list[tuple[str, Any]] = [(path, node)]
    while stack:
        p, value = stack.pop()
        if isinstance(value, Mapping):
            yield p, value
            for k, v in value.items():
                if k in _DATA_KEYWORDS:
                    continue
                stack.append((f"{p}.{k}", v))
        elif isinstance(value, list):
            stack.extend((f"{p}[{i}]", v) for i, v in enumerate(value))


# -- static complexity ------------------------------------------------------------------


def _unescape(token: str) -> str:
    return unquote(token).replace("~1", "/").replace("~0", "~")


def _local_target(root: Any, ref: str, anchors: Mapping[str, Any]) -> Any:
    """What a same-document ``$ref`` points at, or None when it is not one we can follow."""
    if ref == "#":
        return root
    if ref.startswith("#/"):
        node = root
        for token in ref[2:].split("/"):
            key = _unescape(token)
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return None
        return node
    if ref.startswith("#"):
        return anchors.get(ref[1:])
    return None


_END = object()


def schema_expansion(schema: Any, limit: int) -> int:
    """How many schema objects one validation pass may visit once every same-document
    ``$ref`` is followed where it stands (so ``allOf: [$ref d1, $ref d1]`` chains double
    per level), counted without expanding: memoised per node, a cycle counted once.
    Stops early and returns ``limit + 1`` once the count is past ``limit``.
    """
    anchors = {
        node["$anchor"]: node
        for _, node in _walk_schema(schema, "")
        if isinstance(node.get("$anchor"), str)
    }

    def children(node: Any) -> Iterator[Any]:
        if isinstance(node, list):
            yield from (v for v in node if isinstance(v, Mapping | list))
            return
        for k, v in node.items():
            if k in _DATA_KEYWORDS:
                continue
            if k in ("$ref", "$dynamicRef", "$recursiveRef") and isinstance(v, str):
                target = _local_target(schema, v, anchors)
                if isinstance(target, Mapping | list):
                    yield target
            elif isinstance(v, Mapping | list):
                yield v

    if not isinstance(schema, Mapping):
        return 1
    memo: dict[int, int] = {}
    on_path: set[int] = {id(schema)}
    stack: list[tuple[Any, Iterator[Any], list[int]]] = [(schema, children(schema), [1])]
    while stack:
        node, kids, acc = stack[-1]
        child = next(kids, _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(node))
            memo[id(node)] = acc[0]
            if not stack:
                break
            stack[-1][2][0] += acc[0]
            if stack[-1][2][0] > limit:
                return limit + 1
            continue
        cid = id(child)
        if cid in memo:
            acc[0] += memo[cid]
        elif cid in on_path:
            acc[0] += 1  # recursion: bounded by the document's depth, not the schema's
        else:
            on_path.add(cid)
            stack.append((child, children(child), [1]))
            continue
        if acc[0] > limit:
            return limit + 1
    return memo.get(id(schema), 1)


def check_complexity(schema: Any, limits: LimitsConfig) -> None:
    """Refuse a schema that is too big, or small but exponential once expanded."""
    if isinstance(schema, bool):
        return
    bounds = limits.rules
    for nodes, _ in enumerate(_walk_schema(schema, ""), 1):
        if nodes > bounds.max_schema_nodes:
            raise JobRejected(
                "input.schema",
                f"more than {bounds.max_schema_nodes:,} schema objects "
                "(limits.rules.max_schema_nodes)",
            )
    cost = schema_expansion(schema, bounds.max_schema_expansion)
    if cost > bounds.max_schema_expansion:
        raise JobRejected(
            "input.schema",
            f"expands to more than {bounds.max_schema_expansion:,} subschema checks per value "
            "once $ref/allOf/anyOf/oneOf are followed (limits.rules.max_schema_expansion)",
        )


def _known_ids(schema: Any) -> set[str]:
    ids: set[str] = set()
    for _, node in _walk_schema(schema, ""):
        for word in ("$id", "id"):
            v = node.get(word)
            if isinstance(v, str):
                ids.add(v.rstrip("#"))
    return ids


def _no_remote(ref: str, where: str, schema: Any) -> None:
    """Only same-document references and the standard meta-schemas: nothing is fetched."""
    base = ref.split("#", 1)[0]
    if not base:
        return
    ids = _known_ids(schema)
    if base in META_SCHEMAS or base.rstrip("#") in ids:
        return
    if not urlsplit(base).scheme and not base.startswith("//") and ids:
        return  # relative to a nested $id: resolved (or failed cleanly) at run time
    raise JobRejected(
        where,
        f"reference {ref!r} is outside this schema; remote references are not fetched "
        "(use #/$defs/... or a standard meta-schema)",
    )


# -- uniqueItems in linear time ---------------------------------------------------------


def _canonical(value: Any) -> Any:
    """A hashable key equal for values jsonschema calls equal (1 == 1.0, True != 1)."""
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int):
        return ("n", value)
    if isinstance(value, float):
        return ("n", int(value)) if value.is_integer() else ("n", value)
    if isinstance(value, Mapping):
        return ("o", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("a", tuple(_canonical(v) for v in value))
    return ("?", repr(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    # jsonschema's own check compares objects pairwise: 30,000 of them is 450 million
    # comparisons. Hashing canonical forms gives the same verdict in one pass.
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"{reprlib.repr(instance)} has non-unique elements")
            return
        seen.add(key)


_FAST: dict[type[Validator], type[Validator]] = {}


def _fast(cls: type[Validator]) -> type[Validator]:
    if cls not in _FAST:
        _FAST[cls] = validators.extend(cls, {"uniqueItems": _unique_items})
    return _FAST[cls]


def validator_class(
    schema: Mapping[str, Any] | bool, field: str = "input.schema"
) -> type[Validator]:
    if isinstance(schema, Mapping) and "$schema" in schema:
        uri = schema["$schema"]
        cls = validators.validator_for(schema, default=None) if isinstance(uri, str) else None
        if cls is None:
            raise JobRejected(
                f"{field}.$schema",
                f"unknown dialect {uri!r}; known: draft-03, -04, -06, -07, 2019-09, 2020-12",
            )
        return cls
    return DEFAULT_DIALECT


def _build(inp: JsonValidateInput) -> Validator:
    cls = _fast(validator_class(inp.schema_))
    checker = cls.FORMAT_CHECKER if inp.formats else None
    # The meta-schema registry only: a $ref to an outside URL fails instead of fetching it.
    return cls(inp.schema_, registry=META_SCHEMAS, format_checker=checker)


def check(inp: JsonValidateInput, limits: LimitsConfig) -> None:
    schema = inp.schema_
    # Depth, NaN and surrogates were refused for the whole input (rules.validate);
    # size and expansion are this kind's own, checked before the meta-schema runs.
    check_complexity(schema, limits)
    cls = validator_class(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "input.schema" + exc.json_path[1:]
        raise JobRejected(where, f"invalid JSON Schema: {_short(exc.message)}") from exc
    if isinstance(schema, bool):
        return
    nested_ids = False
    refs: list[tuple[str, str]] = []
    for path, node in _walk_schema(schema, "input.schema"):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            compile_pattern(pattern, 0, f"{path}.pattern", limits)
        props = node.get("patternProperties")
        if isinstance(props, Mapping):
            for key in props:
                compile_pattern(str(key), 0, f"{path}.patternProperties", limits)
        for word in ("$ref", "$dynamicRef", "$recursiveRef"):
            ref = node.get(word)
            if isinstance(ref, str):
                _no_remote(ref, f"{path}.{word}", schema)
                if word == "$ref":
                    refs.append((f"{path}.$ref", ref))
        if path != "input.schema" and isinstance(node.get("$id") or node.get("id"), str):
            nested_ids = True
    # A reference into this same document can be checked now; with nested $id the
    # base URI changes along the way, so those are left to run time.
    if refs and not nested_ids:
        resolver = _build(inp)._resolver  # type: ignore[attr-defined]
        for where, ref in refs:
            if not ref.startswith("#"):
                continue
            try:
                resolver.lookup(ref)
            # referencing raises TypeError/ValueError too, e.g. for '#/a/x' into a list.
            except (Unresolvable, LookupError, TypeError, ValueError) as exc:
                raise JobRejected(where, f"reference {ref!r} points to nothing") from exc


# -- run -------------------------------------------------------------------------------


def _short(text: str) -> str:
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def _schema_pointer(err: ValidationError) -> str:
    return "".join(
        "/" + str(p).replace("~", "~0").replace("/", "~1") for p in err.absolute_schema_path
    )


def run(inp: JsonValidateInput, config: FleetConfig) -> dict[str, Any]:
    validator = _build(inp)
    dialect = validator.META_SCHEMA.get("$id") or validator.META_SCHEMA.get("id", "")
    document = inp.document
    if isinstance(document, str) and inp.parse:
        try:
            document = loads_strict(document)
        except RecursionError as exc:
            raise RuleFailed(f"document nested deeper than Python can read ({exc})") from exc
        except ValueError as exc:
            return {
                "valid": False,
                "errors": [
                    {
                        "path": "$",
                        "message": f"document is not valid JSON: {exc}",
                        "keyword": "parse",
                        "schema_path": "",
                    }
                ],
                "count": 1,
                "truncated": False,
                "dialect": dialect,
            }
        # The parsed text gets the same checks as a document given inline.
        try:
            scan(document, "input.document", max_depth=config.limits.max_json_depth)
        except JobRejected as exc:
            raise RuleFailed(f"document {exc.message}") from None

    _install_guard()
    budget = RegexBudget(config.limits.regex_timeout_s)
    token = _BUDGET.set(budget)
    errors: list[dict[str, Any]] = []
    truncated = False
    try:
        for err in validator.iter_errors(document):
            if len(errors) >= inp.max_errors:
                truncated = True
                break
            errors.append(
                {
                    "path": err.json_path,
                    "message": _short(err.message),
                    "keyword": str(err.validator),
                    "schema_path": _schema_pointer(err),
                }
            )
    except TimeoutError as exc:
        raise budget.failure("schema pattern") from exc
    except Unresolvable as exc:
        raise RuleFailed(
            f"schema reference cannot be resolved (nothing is fetched): {exc}"
        ) from exc
    except regex.error as exc:
        raise RuleFailed(f"schema pattern does not compile: {exc}") from exc
    finally:
        _BUDGET.reset(token)
    return {
        "valid": not errors,
        "errors": errors,
        "count": len(errors),
        "truncated": truncated,
        "dialect": dialect,
    }
