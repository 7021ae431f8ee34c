"""tokens.count_near: exact where a limit is close, an estimate on the same side elsewhere."""

from __future__ import annotations

import random

from tierfleet import tokens

WORDS = ["the", "deploy", "rolled", "back", "at", "14:10", "because", "two", "reports",
         "broke;", "retry", "on", "Thursday"]


def _text(n_words: int, seed: int = 3) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def test_short_texts_are_counted_exactly() -> None:
    text = _text(20)
    assert tokens.count_near(text, (400,)) == (tokens.count(text), True)


def test_a_limit_within_reach_gets_the_exact_count() -> None:
    text = _text(800)
    exact = tokens.count(text)
    n, is_exact = tokens.count_near(text, (exact,))
    assert is_exact and n == exact


def test_an_estimate_falls_on_the_same_side_of_every_limit_as_the_count() -> None:
    for words in (300, 900, 3000):
        text = _text(words, seed=words)
        exact = tokens.count(text)
        limits = (400, 8192 - 256, 32768, 50_000)
        n, is_exact = tokens.count_near(text, limits)
        assert [n > x for x in limits] == [exact > x for x in limits]
        if not is_exact:
            assert 0.5 * exact <= n <= 2 * exact
