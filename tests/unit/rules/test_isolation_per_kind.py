"""A rules kind may set its own isolation; keyword_route runs inline unless told otherwise."""

from __future__ import annotations

from tierfleet.config import RuleBounds, RulesLimits


def test_keyword_route_is_inline_by_default_and_the_rest_follow_the_fleet() -> None:
    lim = RulesLimits()
    assert lim.for_kind("keyword_route").isolation == "inline"
    assert lim.for_kind("dedupe").isolation == "fork"
    assert RulesLimits(isolation="inline").for_kind("regex_extract").isolation == "inline"


def test_an_operator_can_put_keyword_route_back_in_the_helper() -> None:
    lim = RulesLimits(keyword_route=RuleBounds(isolation="fork"))
    assert lim.for_kind("keyword_route").isolation == "fork"
