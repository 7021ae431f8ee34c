"""regex_extract: all matches with named groups; bad and hostile patterns never hang a worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tierfleet.config
from tierfleet import rules
from tierfleet.config import FleetConfig, LimitsConfig, load_config
from tierfleet.errors import JobRejected
from tierfleet.jobs import Kind
from tierfleet.rules import RuleFailed
from tierfleet.rules._common import hostile_reason

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))
FAST = CONFIG.model_copy(update={"limits": LimitsConfig(regex_timeout_s=0.2)})


def extract(config: FleetConfig = CONFIG, **payload: Any) -> dict:
    out = rules.execute(Kind.REGEX_EXTRACT, payload, config)
    json.dumps(out)
    return out


def test_named_groups_all_matches() -> None:
    text = "Refund order #1042 for ana@example.org; order #1043 for Bo.Li@example.com."
    out = extract(text=text, pattern=r"order #(?P<order>\d+) for (?P<email>[\w.]+@[\w.]+\w)")
    assert out["count"] == 2 and out["truncated"] is False
    first, second = out["matches"]
    assert first["groups"] == {"order": "1042", "email": "ana@example.org"}
    assert second["groups"] == {"order": "1043", "email": "Bo.Li@example.com"}
    assert text[first["start"]:first["end"]] == first["match"]
    assert first["numbered"] == ["1042", "ana@example.org"]


def test_unnamed_and_optional_groups() -> None:
    out = extract(text="v1.2 v3", pattern=r"v(\d+)(?:\.(?P<minor>\d+))?")
    assert [(m["numbered"], m["groups"]) for m in out["matches"]] == [
        (["1", "2"], {"minor": "2"}),
        (["3", None], {"minor": None}),
    ]


def test_flags() -> None:
    text = "ERROR one\nerror two\nWarn"
    assert extract(text=text, pattern=r"^error \w+$")["count"] == 0
    out = extract(text=text, pattern=r"^error (?P<w>\w+)$", flags=["IGNORECASE", "m"])
    assert [m["groups"]["w"] for m in out["matches"]] == ["one", "two"]
    assert extract(text="a\nb", pattern="a.b", flags=["DOTALL"])["count"] == 1


def test_offsets_are_characters() -> None:
    out = extract(text="héllo wörld", pattern=r"w\w+")
    assert out["matches"][0]["start"] == 6 and out["matches"][0]["match"] == "wörld"


def test_match_cap() -> None:
    out = extract(text="x" * 50, pattern="x", max_matches=7)
    assert out["count"] == 7 and out["truncated"] is True


def test_no_match() -> None:
    assert extract(text="nothing", pattern=r"\d+") == {"matches": [], "count": 0,
                                                        "truncated": False}


def test_obviously_hostile_pattern_is_refused_at_submit() -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.REGEX_EXTRACT, {"text": "a" * 40 + "!", "pattern": "(a+)+$"},
                       CONFIG.limits)
    assert info.value.field == "input.pattern" and "nested" in info.value.message
    # The worker refuses it the same way, as a clean failure.
    with pytest.raises(RuleFailed, match=r"input\.pattern"):
        extract(FAST, text="a" * 40 + "!", pattern="(a+)+$")


def test_catastrophic_backtracking_becomes_a_clean_failure() -> None:
    # Not caught by the static look: only the timeout stops it.
    payload = {"text": "a" * 60 + "!", "pattern": r"(a|aa)+$"}
    rules.validate(Kind.REGEX_EXTRACT, payload, FAST.limits)
    with pytest.raises(RuleFailed, match=r"pattern timed out after 0\.2s") as info:
        extract(FAST, **payload)
    assert info.value.kind == "regex_extract"


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+", r"(a*)*", r"(?:\w+)*", r"(?P<x>[a-z]+)+", r"(.*)+", r"(\d+){2,}", r"(a+?)*",
     r"(?:a{1000}){1000}", r"((a{100}){100}){100}"],
)
def test_static_look_flags(pattern: str) -> None:
    assert hostile_reason(pattern) is not None


@pytest.mark.parametrize(
    "pattern",
    [r"(\d+,)*", r"(ab+)+", r"(a+)", r"(?>a+)+", r"(a++)+", r"(a+)++", r"\(a+\)+",
     r"(\d{1,3}\.){3}\d{1,3}", r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
     r"(?:[a-z]{1,100}){1,100}", r"(a{2})+", r"order #(?P<id>\d+)"],
)
def test_static_look_leaves_ordinary_patterns_alone(pattern: str) -> None:
    assert hostile_reason(pattern) is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"pattern": "x"}, "input.text"),
        ({"text": "x"}, "input.pattern"),
        ({"text": "x", "pattern": ""}, "input.pattern"),
        ({"text": "x", "pattern": "(unclosed"}, "input.pattern"),
        ({"text": "x", "pattern": "x{99999999999}"}, "input.pattern"),
        ({"text": "x", "pattern": "(" * 900 + ")" * 900}, "input.pattern"),
        ({"text": "x", "pattern": "x", "flags": ["IGNORECASE", "LOUD"]}, "input.flags[1]"),
        ({"text": "x", "pattern": "x", "flags": "I"}, "input.flags"),
        ({"text": "x", "pattern": "x", "max_matches": 0}, "input.max_matches"),
        ({"text": "x", "pattern": "x", "max_matches": 10**6}, "input.max_matches"),
        ({"text": 5, "pattern": "x"}, "input.text"),
    ],
)
def test_rejections_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.REGEX_EXTRACT, payload, CONFIG.limits)
    assert info.value.field == field, str(info.value)


def test_limits_on_text_and_pattern_length() -> None:
    small = LimitsConfig(max_payload_bytes=1000, max_regex_chars=20)
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.REGEX_EXTRACT, {"text": "x" * 1001, "pattern": "x"}, small)
    assert info.value.field == "input" and "max_payload_bytes" in info.value.message
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.REGEX_EXTRACT, {"text": "x", "pattern": "x" * 21}, small)
    assert info.value.field == "input.pattern" and "max_regex_chars" in info.value.message
