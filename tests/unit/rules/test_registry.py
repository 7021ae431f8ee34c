"""The rules contract: validate() rejects naming a field; execute() gives JSON or RuleFailed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tierfleet.config
from tierfleet import rules
from tierfleet.config import LimitsConfig, load_config
from tierfleet.errors import JobRejected, TierfleetError
from tierfleet.jobs import RULES_KINDS, Kind
from tierfleet.rules import RuleFailed
from tierfleet.rules.dedupe import DedupeInput

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))
FAST = CONFIG.model_copy(update={"limits": LimitsConfig(regex_timeout_s=0.2)})

EXAMPLES: dict[Kind, dict[str, Any]] = {
    Kind.DEDUPE: {"items": ["a", "A", "b"]},
    Kind.JSON_VALIDATE: {"document": {"a": 1}, "schema": {"type": "object"}},
    Kind.REGEX_EXTRACT: {"text": "id=1 id=2", "pattern": r"id=(?P<id>\d)"},
    Kind.LOG_SLICE: {"text": "02:00:00 ERROR x\n02:01:00 INFO y", "levels": ["ERROR"]},
    Kind.KEYWORD_ROUTE: {"text": "vpn down"},
}


def test_every_rules_kind_has_an_executor() -> None:
    assert set(rules.EXECUTORS) == set(RULES_KINDS) == set(EXAMPLES)


@pytest.mark.parametrize("kind", sorted(RULES_KINDS))
def test_validate_returns_the_input_model_and_execute_json(kind: Kind) -> None:
    model = rules.validate(kind, EXAMPLES[kind], CONFIG.limits)
    assert isinstance(model, rules.EXECUTORS[kind].input_model)
    out = rules.execute(kind, EXAMPLES[kind], CONFIG)
    assert isinstance(out, dict)
    assert json.loads(json.dumps(out)) == out
    assert rules.input_schema(kind)["type"] == "object"
    # Kinds also arrive as plain strings off the wire.
    assert rules.execute(kind.value, EXAMPLES[kind], CONFIG) == out


def test_validate_parses_into_the_model() -> None:
    model = rules.validate(Kind.DEDUPE, {"items": ["x"]}, CONFIG.limits)
    assert model == DedupeInput(items=["x"], normalise=True)


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        ("summary", {"text": "x"}, "kind"),
        ("telepathy", {}, "kind"),
        (Kind.DEDUPE, None, "input"),
        (Kind.DEDUPE, ["a", "b"], "input"),
        (Kind.DEDUPE, {"items": [{1, 2}]}, "input.items[0]"),  # a set is not JSON
        (Kind.KEYWORD_ROUTE, {"text": "x", "rules": None, "colour": "red"}, "input.colour"),
    ],
)
def test_rejections_name_the_field(kind: Any, payload: Any, field: str) -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(kind, payload, CONFIG.limits)
    assert info.value.field == field, str(info.value)


def test_several_problems_are_all_mentioned() -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.REGEX_EXTRACT, {"txt": "x", "flags": 3}, CONFIG.limits)
    assert info.value.field == "input.text"
    assert "input.pattern" in info.value.message and "input.txt" in info.value.message


def test_huge_input_is_rejected_by_the_limits() -> None:
    limits = LimitsConfig(max_payload_bytes=10_000, max_prompt_chars=5_000)
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.DEDUPE, {"items": ["y" * 100] * 200}, limits)
    assert info.value.field == "input" and "max_payload_bytes" in info.value.message
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.KEYWORD_ROUTE, {"text": "z" * 6_000}, limits)
    assert info.value.field == "input.text" and "max_prompt_chars" in info.value.message
    # The default limits hold at execution too: the worker fails the job cleanly.
    big = CONFIG.limits.max_payload_bytes
    with pytest.raises(RuleFailed, match="max_payload_bytes"):
        rules.execute(Kind.DEDUPE, {"items": ["q" * 1000] * (big // 1000 + 1)}, CONFIG)


def test_execute_turns_bad_input_into_rule_failed() -> None:
    with pytest.raises(RuleFailed) as info:
        rules.execute(Kind.JSON_VALIDATE, {"document": 1, "schema": {"type": 5}}, CONFIG)
    assert "input.schema.type" in str(info.value) and info.value.kind == "json_validate"
    assert isinstance(info.value, TierfleetError)
    with pytest.raises(RuleFailed, match="not a rules kind"):
        rules.execute("chat", {"text": "x"}, CONFIG)


def test_hostile_regex_returns_rule_failed() -> None:
    # The classic: refused before any matching is tried.
    with pytest.raises(RuleFailed):
        rules.execute(Kind.REGEX_EXTRACT, {"text": "a" * 40 + "!", "pattern": "(a+)+$"}, FAST)
    # And one only the timeout can stop.
    with pytest.raises(RuleFailed, match="timed out"):
        rules.execute(Kind.REGEX_EXTRACT, {"text": "a" * 60 + "!", "pattern": "(a|a)+$"}, FAST)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _payloads(kind: Kind) -> st.SearchStrategy[dict[str, Any]]:
    """Payloads that are near the real shape, with any field swapped for junk."""
    base = EXAMPLES[kind]
    return st.dictionaries(
        st.sampled_from([*base, "pattern", "schema", "flags", "start", "end", "levels",
                         "max_lines", "rules", "default", "junk"]),
        json_values | st.sampled_from([*base.values(), "(", "(a|a)+$", "25:00", [], {}]),
        max_size=6,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("kind", sorted(RULES_KINDS))
def test_never_crashes_on_any_payload(kind: Kind, data: st.DataObject) -> None:
    payload = data.draw(_payloads(kind))
    try:
        rules.validate(kind, payload, FAST.limits)
    except JobRejected as exc:
        assert exc.field == "input" or exc.field.startswith("input.")
    try:
        out = rules.execute(kind, payload, FAST)
    except RuleFailed as exc:
        assert str(exc)
    else:
        json.dumps(out)
