"""dedupe: exact and normalised near-duplicates, first kept, order preserved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tierfleet.config
from tierfleet import rules
from tierfleet.config import FleetConfig, load_config
from tierfleet.errors import JobRejected
from tierfleet.jobs import Kind
from tierfleet.rules.dedupe import normalise

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))


def dedupe(items: list[str], normalise: bool = True, config: FleetConfig = CONFIG) -> dict:
    out = rules.execute(Kind.DEDUPE, {"items": items, "normalise": normalise}, config)
    json.dumps(out)  # the worker ships it as JSON
    return out


def test_support_tickets_exact_and_near_duplicates() -> None:
    items = [
        "Reset my VPN password",
        "reset my VPN password!",
        "Printer on floor 3 is jammed",
        "Reset my VPN password",
        "  RESET   my vpn, password ",
        "\uff32\uff45\uff53\uff45\uff54 my VPN password",  # full-width letters: NFKC folds them
        "Printer on floor 3 is jammed.",
        "Outlook won't start",
        "Outlook wont start",
    ]
    out = dedupe(items)
    assert out["unique"] == ["Reset my VPN password", "Printer on floor 3 is jammed",
                             "Outlook won't start"]
    assert out["count_in"] == 9 and out["count_out"] == 3
    by_index = {d["index"]: d for d in out["duplicates"]}
    assert sorted(by_index) == [1, 3, 4, 5, 6, 8]
    assert by_index[3] == {"index": 3, "of_index": 0, "how": "exact"}
    assert by_index[1]["how"] == "normalised" and by_index[1]["of_index"] == 0
    assert by_index[6]["of_index"] == 2
    assert out["duplicate_count"] == 6 and out["truncated"] is False
    assert by_index[8]["of_index"] == 7


def test_without_normalise_only_exact_repeats_go() -> None:
    out = dedupe(["a b", "A B", "a b", "a  b"], normalise=False)
    assert out["unique"] == ["a b", "A B", "a  b"]
    assert [(d["index"], d["of_index"], d["how"]) for d in out["duplicates"]] == [(2, 0, "exact")]


def test_a_repeat_of_a_near_duplicate_points_at_the_kept_item() -> None:
    out = dedupe(["Hello", "hello", "hello"])
    assert out["unique"] == ["Hello"]
    assert [(d["of_index"], d["how"]) for d in out["duplicates"]] == [(0, "normalised")] * 2


def test_punctuation_only_texts_are_compared_exactly() -> None:
    out = dedupe(["?", "!!", "?", "", " "])
    assert out["unique"] == ["?", "!!", "", " "]


def test_normalise_key() -> None:
    assert normalise("  \uff28éllo,\u200bWORLD!! ") == normalise("héllo world") == "héllo world"
    assert normalise("Straße") == normalise("STRASSE")
    assert normalise("ﬁne") == "fine"  # ligature
    assert normalise("Won't e-mail") == normalise("wont email") == "wont email"
    assert normalise("a,b;c") == "a b c"


def test_empty_list() -> None:
    assert dedupe([]) == {"unique": [], "duplicates": [], "duplicate_count": 0, "truncated": False,
                          "count_in": 0, "count_out": 0}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "input.items"),
        ({"items": "one text"}, "input.items"),
        ({"items": ["a", 2]}, "input.items[1]"),
        ({"items": ["a"], "normalise": "yes"}, "input.normalise"),
        ({"items": ["a"], "normalize": True}, "input.normalize"),
    ],
)
def test_rejections_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.DEDUPE, payload, CONFIG.limits)
    assert info.value.field == field


texts = st.lists(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from(
            ["VPN down", "vpn down!", " VPN  DOWN ", "\uff36\uff50\uff4e down", "?", "", "a"]
        ),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(items=texts, norm=st.booleans())
def test_idempotent_and_order_preserving(items: list[str], norm: bool) -> None:
    out = dedupe(items, normalise=norm)
    unique = out["unique"]
    # Order preserved: unique is a subsequence of items, made of first occurrences.
    it = iter(items)
    assert all(any(u == x for x in it) for u in unique)
    assert out["count_in"] == len(items)
    assert out["count_out"] == len(unique) == len(items) - len(out["duplicates"])
    kept = {i for i in range(len(items))} - {d["index"] for d in out["duplicates"]}
    assert [items[i] for i in sorted(kept)] == unique
    for d in out["duplicates"]:
        assert d["of_index"] < d["index"] and d["of_index"] in kept
        assert (d["how"] == "exact") == (items[d["index"]] == items[d["of_index"]])
    # Idempotent: deduplicating the answer changes nothing.
    again = dedupe(unique, normalise=norm)
    assert again["unique"] == unique and again["duplicates"] == []
    if not norm:
        assert unique == list(dict.fromkeys(items))


def test_many_repeats_give_a_small_answer_listing_a_capped_number() -> None:
    # Indices, not copies: a list of repeats of one long text answers in a few bytes each.
    long = "a" + " " * 10_000
    items = [long] + ["a"] * 5_000
    out = rules.execute(Kind.DEDUPE, {"items": items, "max_duplicates": 100}, CONFIG)
    assert out["unique"] == [long] and out["duplicate_count"] == 5_000
    assert len(out["duplicates"]) == 100 and out["truncated"] is True
    assert len(json.dumps(out)) < 20_000
