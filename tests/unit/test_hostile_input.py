"""Hostile input at the front door: whatever is handed to parse_job, submit or
submit_many, the only way out is a Handle or a JobRejected naming the field.

The dispatcher is wired to fakeredis and a recording publisher, so an accepted job
goes all the way through routing and "publishing" without a broker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tierfleet
import tierfleet.config
from tierfleet import dispatch
from tierfleet.config import LimitsConfig, load_config
from tierfleet.dispatch import Dispatcher, Handle, check_limits, parse_job
from tierfleet.errors import JobRejected
from tierfleet.jobs import Job, Kind
from tierfleet.rules import json_validate as jv

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 32).decode()
WEBP = base64.b64encode(b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32).decode()


class _Producer:
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield


class _App:
    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[_Producer]:
        yield _Producer()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setattr(dispatch, "send", lambda app, d, producer=None: out.append(d.tier))
    return out


@pytest.fixture
def disp(sent: list[str]) -> Dispatcher:
    return Dispatcher(CONFIG, client=fakeredis.FakeRedis(decode_responses=True), app=_App())  # type: ignore[arg-type]


def rejected(data: Any, limits: LimitsConfig = CONFIG.limits) -> JobRejected:
    with pytest.raises(JobRejected) as info:
        check_limits(parse_job(data, limits), CONFIG.model_copy(update={"limits": limits}))
    assert isinstance(info.value.field, str) and info.value.field
    # The message must be printable anywhere: no unpaired surrogate may leak into it.
    str(info.value).encode("utf-8")
    return info.value


def deep(n: int, leaf: Any = 1) -> Any:
    for _ in range(n):
        leaf = {"a": leaf}
    return leaf


# -- not a job at all -------------------------------------------------------------------


@pytest.mark.parametrize("data", ["a string", None, 42, 4.2, b"bytes", ["kind", "summary"], {1, 2},
                                  object(), Kind.SUMMARY])
def test_what_is_not_a_job_is_rejected_as_job(data: Any, disp: Dispatcher) -> None:
    assert rejected(data).field == "job"
    with pytest.raises(JobRejected):
        disp.submit(data)


def test_the_public_api_rejects_a_string(monkeypatch: pytest.MonkeyPatch, disp: Dispatcher) -> None:
    monkeypatch.setattr(dispatch, "_default", disp)
    for bad in ("a string", 42):
        with pytest.raises(JobRejected) as info:
            tierfleet.submit(bad)  # type: ignore[arg-type]
        assert info.value.field == "job"
    with pytest.raises(JobRejected):
        tierfleet.submit(None)  # no fields at all: needs a prompt
    with pytest.raises(JobRejected) as info:
        tierfleet.submit_many("not a list")  # type: ignore[arg-type]
    assert info.value.field == "jobs"


# -- strings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"kind": "summary", "prompt": "hi \ud800 there"}, "prompt"),
        ({"kind": "chat", "messages": [{"role": "user", "content": "x\udfff"}]}, "messages[0].content"),
        ({"kind": "summary", "prompt": "hi", "metadata": {"team": "\ud83d"}}, "metadata.team"),
        ({"kind": "summary", "prompt": "hi", "metadata": {"\udc80": "x"}}, "metadata.\\udc80"),
        ({"kind": "summary", "prompt": "hi", "workflow": "w\ud800"}, "workflow"),
        ({"kind": "summary", "prompt": "hi", "id": "\ud800"}, "id"),
        ({"kind": "dedupe", "input": {"items": ["ok", "\ud800"]}}, "input.items[1]"),
        ({"kind": "json_validate", "input": {"document": {"k": ["\udfff"]}, "schema": {}}},
         "input.document.k[0]"),
        ({"kind": "regex_extract", "input": {"text": "x", "pattern": "\ud800"}}, "input.pattern"),
    ],
)
def test_unpaired_surrogates_are_rejected_naming_the_field(job: dict[str, Any], field: str) -> None:
    exc = rejected(job)
    assert exc.field == field
    assert "surrogate" in exc.message


def test_a_job_object_is_scanned_too() -> None:
    # model_construct skips validation: the dispatcher must not trust a Job it is handed.
    bad = Job.model_construct(kind=Kind.DEDUPE, input={"items": ["\ud800"]}, images=[], metadata={})
    assert rejected(bad).field == "input.items[0]"
    assert rejected(Job.model_construct(kind=Kind.DEDUPE, input=deep(10_000), images=[],
                                        metadata={})).field.startswith("input")
    good = Job(kind=Kind.DEDUPE, input={"items": ["a"]})
    assert parse_job(good).id == good.id


# -- nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [65, 1_000, 10_000, 100_000])
@pytest.mark.parametrize("where", ["input", "metadata", "list"])
def test_deep_nesting_is_rejected_before_any_recursion(n: int, where: str) -> None:
    if where == "input":
        job = {"kind": "json_validate", "input": {"document": deep(n), "schema": {}}}
        field = "input.document"
    elif where == "metadata":
        job = {"kind": "summary", "prompt": "x", "metadata": deep(n)}
        field = "metadata.a"
    else:
        value: Any = 0
        for _ in range(n):
            value = [value]
        job = {"kind": "dedupe", "input": {"items": value}}
        field = "input.items"
    exc = rejected(job)
    assert exc.field == field
    assert "max_json_depth" in exc.message


def test_the_depth_limit_is_the_configured_one() -> None:
    ok = {"kind": "json_validate", "input": {"document": deep(20), "schema": {}}}
    parse_job(ok)
    tight = LimitsConfig(max_json_depth=10)
    assert "(10)" in rejected(ok, tight).message


# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "make",
    [
        lambda v: ({"kind": "json_validate", "input": {"document": v, "schema": {"type": "number"}}},
                   "input.document"),
        lambda v: ({"kind": "json_validate", "input": {"document": {"x": [1, v]}, "schema": {}}},
                   "input.document.x[1]"),
        lambda v: ({"kind": "json_validate", "input": {"document": 1, "schema": {"maximum": v}}},
                   "input.schema.maximum"),
        lambda v: ({"kind": "summary", "prompt": "x", "max_cost_usd": v}, "max_cost_usd"),
        lambda v: ({"kind": "summary", "prompt": "x", "latency_budget_s": v}, "latency_budget_s"),
    ],
)
def test_nan_and_infinity_are_not_json(bad: float, make: Any) -> None:
    job, field = make(bad)
    exc = rejected(job)
    assert exc.field == field


@pytest.mark.parametrize("spelled", ["NaN", "nan", "inf", "-Infinity"])
def test_nan_spelled_as_a_string_is_not_a_number_either(spelled: str) -> None:
    assert rejected({"kind": "summary", "prompt": "x", "max_cost_usd": spelled}).field == "max_cost_usd"


@pytest.mark.parametrize("text", ["NaN", "[1, Infinity]", '{"a": -Infinity}'])
def test_json_validate_judges_nan_text_not_json(text: str) -> None:
    from tierfleet import rules

    out = rules.execute("json_validate", {"document": text, "schema": {"type": ["number", "array",
                                                                              "object"]}}, CONFIG)
    assert out["valid"] is False and out["errors"][0]["keyword"] == "parse"


def test_huge_integers_are_refused() -> None:
    assert rejected({"kind": "dedupe", "input": {"items": [], "x": 10**5000}}).field == "input.x"


# -- images -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("not base64!!", "base64"),
        ("aGVsbG8gd29ybGQ=", "PNG"),  # valid base64 of "hello world"
        ("data:image/png;base64," + PNG, "data: URL"),
        (PNG[:-3], "base64"),  # cut: bad padding
        ("", "PNG"),
        ("é" + PNG, "non-ASCII"),
    ],
)
def test_images_must_be_base64_of_an_image(image: str, why: str) -> None:
    exc = rejected({"kind": "vision", "prompt": "what is this", "images": [PNG, image]})
    assert exc.field == "images[1]" and why in exc.message
    exc = rejected({"kind": "vision", "messages": [
        {"role": "user", "content": "and this", "images": [image]}]})
    assert exc.field == "messages[0].images[0]"


def test_real_image_headers_are_accepted_and_oversize_refused() -> None:
    for img in (PNG, JPEG, WEBP, base64.b64encode(b"GIF89a" + b"\x00" * 20).decode()):
        check_limits(parse_job({"kind": "vision", "prompt": "describe", "images": [img]}), CONFIG)
    wrapped = "\n".join(PNG[i : i + 8] for i in range(0, len(PNG), 8))  # MIME line breaks
    check_limits(parse_job({"kind": "vision", "prompt": "describe", "images": [wrapped]}), CONFIG)
    big = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5_000).decode()
    exc = rejected({"kind": "vision", "prompt": "x", "images": [big]}, LimitsConfig(max_image_bytes=1_000))
    assert exc.field == "images[0]" and "max_image_bytes" in exc.message


# -- size ---------------------------------------------------------------------------------


def test_oversize_prompt_payload_and_batch(disp: Dispatcher) -> None:
    limits = LimitsConfig(max_payload_bytes=10_000, max_prompt_chars=5_000)
    assert rejected({"kind": "summary", "prompt": "x" * 6_000}, limits).field == "prompt"
    assert rejected({"kind": "dedupe", "input": {"items": ["x" * 100] * 200}}, limits).field == "input"
    # Far over: stopped early by the scan, still naming the field.
    assert rejected({"kind": "dedupe", "input": {"items": ["y"] * 1_000_000}}, limits).field == "input"
    small = disp.config.model_copy(update={"limits": LimitsConfig(max_batch=3, max_batch_bytes=5_000)})
    d = Dispatcher(small, client=disp.r, app=disp.app)
    with pytest.raises(JobRejected) as info:
        d.submit_many({"kind": "summary", "prompt": f"p{i}"} for i in range(10))
    assert info.value.field == "jobs" and "max_batch" in info.value.message
    with pytest.raises(JobRejected) as info:
        d.submit_many([{"kind": "summary", "prompt": "x" * 3_000}] * 3)
    assert info.value.field == "jobs" and "max_batch_bytes" in info.value.message


def test_a_bad_job_in_a_batch_is_named_by_index_and_nothing_is_sent(disp: Dispatcher,
                                                                    sent: list[str]) -> None:
    jobs: list[Any] = [{"kind": "summary", "prompt": "fine"}, "oops", {"kind": "summary", "prompt": "x"}]
    with pytest.raises(JobRejected) as info:
        disp.submit_many(jobs)
    assert info.value.field == "[1].job"
    jobs[1] = {"kind": "summary", "prompt": "bad \ud800"}
    with pytest.raises(JobRejected) as info:
        disp.submit_many(jobs)
    assert info.value.field == "[1].prompt"
    assert sent == []

    def exploding() -> Iterator[dict[str, Any]]:
        yield {"kind": "summary", "prompt": "fine"}
        raise RuntimeError("the caller's generator broke")

    with pytest.raises(JobRejected) as info:
        disp.submit_many(exploding())
    assert info.value.field == "jobs"
    assert len(disp.submit_many([{"kind": "summary", "prompt": "ok"}] * 2)) == 2 and len(sent) == 2


# -- json_validate's static complexity ---------------------------------------------------


def _allof_chain(levels: int) -> dict[str, Any]:
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
            for i in range(levels)}
    defs[f"d{levels}"] = {"type": "integer"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


def test_an_exponential_schema_is_refused_at_submit_a_linear_one_is_not() -> None:
    schema = _allof_chain(24)
    assert len(json.dumps(schema)) < 2_500
    exc = rejected({"kind": "json_validate", "input": {"document": 1, "schema": schema}})
    assert exc.field == "input.schema" and "max_schema_expansion" in exc.message
    parse_job({"kind": "json_validate", "input": {"document": 1, "schema": _allof_chain(5)}})
    # Same blow-up through anyOf and through properties: the count is keyword-blind.
    defs = {f"d{i}": {"properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}, "b": {"$ref": f"#/$defs/d{i + 1}"}}}
            for i in range(30)}
    defs["d30"] = {}
    exc = rejected({"kind": "json_validate", "input": {"document": {}, "schema": {"$ref": "#/$defs/d0",
                                                                                "$defs": defs}}})
    assert "max_schema_expansion" in exc.message
    # A recursive schema (a tree) is fine: the recursion is bounded by the document.
    tree = {"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {
        "$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"}
    check_limits(parse_job({"kind": "json_validate", "input": {"document": {"kids": [{"kids": []}]},
                                                               "schema": tree}}), CONFIG)
    assert jv.schema_expansion(tree, 1_000) < 20


def test_schema_size_and_remote_refs_are_refused() -> None:
    wide = {"properties": {f"p{i}": {"type": "string"} for i in range(20_000)}}
    exc = rejected({"kind": "json_validate", "input": {"document": {}, "schema": wide}})
    assert exc.field == "input.schema" and "max_schema_nodes" in exc.message
    for ref in ("https://evil.example/x.json", "file:///etc/passwd", "//host/x", "other.json#/a"):
        exc = rejected({"kind": "json_validate", "input": {"document": 1, "schema": {
            "properties": {"a": {"$ref": ref}}}}})
        assert exc.field == "input.schema.properties.a.$ref", ref
    # The standard meta-schemas stay usable.
    check_limits(parse_job({"kind": "json_validate", "input": {"document": {}, "schema": {
        "$ref": "https://json-schema.org/draft/2020-12/schema"}}}), CONFIG)


# -- property: nothing but JobRejected ----------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=20),
    st.binary(max_size=5), st.just(object()), st.sets(st.integers(), max_size=2),
)
_jsonish = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.none()), inner, max_size=4),
    ),
    max_leaves=25,
)
_fields = st.sampled_from([
    "id", "kind", "prompt", "messages", "images", "input", "risk", "privacy", "workflow", "user_tier",
    "session", "max_cost_usd", "latency_budget_s", "tier", "model", "max_tokens", "json_output",
    "cache", "metadata", "colour",
])
_kinds = st.sampled_from([k.value for k in Kind] + ["nope", 3])
_jobs = st.one_of(
    _jsonish,
    st.fixed_dictionaries({"kind": _kinds}, optional={"prompt": _jsonish, "input": _jsonish,
                                                      "messages": _jsonish, "images": _jsonish}),
    st.dictionaries(_fields, _jsonish, max_size=6),
    st.builds(lambda kind, d: {"kind": kind, "input": d}, _kinds,
              st.dictionaries(st.sampled_from(["items", "text", "pattern", "document", "schema",
                                               "rules", "levels", "start", "end", "flags",
                                               "max_lines", "normalise"]), _jsonish, max_size=4)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=_jobs)
def test_anything_at_submit_is_a_handle_or_a_rejection(data: Any, disp: Dispatcher) -> None:
    try:
        handle = disp.submit(data)
    except JobRejected as exc:
        assert isinstance(exc.field, str) and exc.field
        str(exc).encode("utf-8")
    else:
        assert isinstance(handle, Handle)
        json.dumps(parse_job(data).model_dump(mode="json"), allow_nan=False).encode("utf-8")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(batch=st.one_of(st.lists(_jobs, max_size=4), _jsonish))
def test_anything_at_submit_many_is_handles_or_a_rejection(batch: Any, disp: Dispatcher) -> None:
    try:
        handles = disp.submit_many(batch)
    except JobRejected as exc:
        assert exc.field
    else:
        assert all(isinstance(h, Handle) for h in handles)


@settings(max_examples=50, deadline=None)
@given(depth=st.integers(min_value=65, max_value=3_000), wrap=st.sampled_from(["list", "dict"]))
def test_any_depth_is_rejected_cleanly(depth: int, wrap: str) -> None:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if wrap == "list" else {"k": value}
    with pytest.raises(JobRejected):
        parse_job({"kind": "json_validate", "input": {"document": value, "schema": {}}})


@pytest.mark.parametrize(("data", "field"), [
    ({"": b""}, '[""]'),
    ({"input": {"a.b": [1, float("nan")]}, "kind": "dedupe"}, 'input["a.b"][1]'),
])
def test_a_key_a_dotted_path_cannot_show_is_named_in_brackets(
        data: Any, field: str, disp: Dispatcher) -> None:
    """An empty key, or one with a dot, would name no field or the wrong one."""
    with pytest.raises(JobRejected) as info:
        disp.submit(data)
    assert info.value.field == field


def test_a_list_far_over_the_payload_limit_is_refused_before_it_is_walked() -> None:
    """A million items over a 10 kB limit: refused on its length alone (before, the scan
    queued every item first, seconds of CPU per such request)."""
    from tierfleet.inputs import scan

    walked = 0

    class Counted(list):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[Any]:
            nonlocal walked
            for item in super().__iter__():
                walked += 1
                yield item

    with pytest.raises(JobRejected) as info:
        scan({"input": {"items": Counted(["y"] * 1_000_000)}}, "", max_depth=20,
             max_bytes=10_000, start_depth=-1)
    assert info.value.field == "input" and "max_payload_bytes" in info.value.message
    assert walked == 0
