"""keyword_route: first matching rule by whole word, any case; always some label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tierfleet.config
from tierfleet import rules
from tierfleet.config import FleetConfig, KeywordRule, RulesConfig, load_config
from tierfleet.errors import JobRejected
from tierfleet.jobs import Kind

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))

SUPPORT = [
    {"label": "vpn", "any": ["vpn", "anyconnect", "remote access"]},
    {"label": "email", "any": ["outlook", "email", "e-mail", "mailbox"]},
    {"label": "dev", "any": ["c++", ".net", "node.js"]},
]


def route(text: str, config: FleetConfig = CONFIG, **payload: Any) -> dict:
    out = rules.execute(Kind.KEYWORD_ROUTE, {"text": text, **payload}, config)
    json.dumps(out)
    return out


def test_config_rules_are_the_default_as_in_the_seed() -> None:
    # The seed's detect_ticket_type: vpn -> "vpn", outlook/email -> "email", else "review".
    assert route("My VPN drops every hour")["label"] == "vpn"
    assert route("Outlook keeps asking for my password") == {
        "label": "email", "matched": "outlook", "rule": 1, "default": False}
    assert route("The printer is out of toner") == {
        "label": "review", "matched": None, "rule": None, "default": True}


def test_first_rule_wins_and_the_earliest_keyword_is_reported() -> None:
    out = route("Email about the VPN outage", rules=SUPPORT)
    assert out["label"] == "vpn" and out["matched"] == "vpn"
    out = route("mailbox full, outlook slow", rules=SUPPORT)
    assert out["label"] == "email" and out["matched"] == "mailbox"


def test_whole_words_only_any_case() -> None:
    assert route("Please check my emails", rules=SUPPORT)["default"] is True
    assert route("EMAIL bounced", rules=SUPPORT)["matched"] == "email"
    assert route("my E-Mail bounced", rules=SUPPORT)["matched"] == "e-mail"
    assert route("I cannot vpnconnect", rules=SUPPORT)["default"] is True
    assert route("\uff36\uff30\uff2e is down", rules=SUPPORT)["label"] == "vpn"  # full-width, NFKC


def test_phrases_and_symbol_keywords() -> None:
    assert route("no REMOTE\n  ACCESS today", rules=SUPPORT)["matched"] == "remote access"
    assert route("remote-access", rules=SUPPORT)["default"] is True
    assert route("segfault in C++ build", rules=SUPPORT)["matched"] == "c++"
    assert route("upgrade to .NET 8", rules=SUPPORT)["matched"] == ".net"
    assert route("see asp.net docs", rules=SUPPORT)["default"] is True  # inside a word


def test_default_label_from_input_then_config() -> None:
    assert route("nothing", rules=SUPPORT, default="triage")["label"] == "triage"
    cfg = CONFIG.model_copy(update={"rules": RulesConfig(
        keyword_routes=[KeywordRule(label="billing", any=["invoice"])], default_label="human")})
    assert route("Invoice 12 is wrong", cfg)["label"] == "billing"
    assert route("VPN down", cfg)["label"] == "human"
    assert route("anything", rules=[], default="x") == {
        "label": "x", "matched": None, "rule": None, "default": True}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "input.text"),
        ({"text": "x", "rules": [{"label": "a"}]}, "input.rules[0].any"),
        ({"text": "x", "rules": [{"label": "a", "any": []}]}, "input.rules[0].any"),
        ({"text": "x", "rules": [{"label": "", "any": ["k"]}]}, "input.rules[0].label"),
        ({"text": "x", "rules": [{"label": "a", "any": ["k", "  "]}]}, "input.rules[0].any[1]"),
        ({"text": "x", "rules": [{"label": "a", "any": ["k"], "all": ["z"]}]},
         "input.rules[0].all"),
        ({"text": "x", "default": ""}, "input.default"),
    ],
)
def test_rejections_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.KEYWORD_ROUTE, payload, CONFIG.limits)
    assert info.value.field == field, str(info.value)


words = st.text(alphabet=st.characters(categories=("L", "N")), min_size=1, max_size=8)
rule_sets = st.lists(
    st.fixed_dictionaries({"label": words, "any": st.lists(words, min_size=1, max_size=4)}),
    max_size=5,
)


@settings(max_examples=120, deadline=None)
@given(text=st.text(max_size=80), rule_set=rule_sets, default=words)
def test_total_every_text_gets_a_label(text: str, rule_set: list[dict], default: str) -> None:
    out = route(text, rules=rule_set, default=default)
    if out["default"]:
        assert out["label"] == default and out["matched"] is None and out["rule"] is None
    else:
        rule = rule_set[out["rule"]]
        assert out["label"] == rule["label"] and out["matched"] in rule["any"]


@settings(max_examples=100, deadline=None)
@given(before=st.text(max_size=20), after=st.text(max_size=20), rule_set=rule_sets,
       data=st.data())
def test_a_keyword_standing_alone_always_routes(before: str, after: str, rule_set: list[dict],
                                                data: st.DataObject) -> None:
    if not rule_set:
        return
    i = data.draw(st.integers(0, len(rule_set) - 1))
    keyword = data.draw(st.sampled_from(rule_set[i]["any"]))
    out = route(f"{before} {keyword} {after}", rules=rule_set, default="none-of-these")
    assert out["default"] is False and out["rule"] <= i
