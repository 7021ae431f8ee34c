"""``dedupe``: drop exact and near-duplicate texts from a list, keeping the first of each.

Input::

    {"items": ["Reset my VPN", "reset my vpn!", "Printer jam"], "normalise": true}

- ``items`` (list of strings, required): the texts, in order. The payload size
  limit (``limits.max_payload_bytes``) bounds the list.
- ``max_duplicates`` (optional): how many duplicates to list (see below).
- ``normalise`` (bool, default true): also treat texts as duplicates when they
  differ only in case, whitespace, punctuation, invisible format characters or
  Unicode compatibility forms (NFKC: full-width letters, ligatures, ...). Hyphens
  and apostrophes inside a word join it (``e-mail`` = ``email``); other
  punctuation counts as a space (``a,b`` = ``a b``). With false only exact
  repeats are dropped.

Output::

    {"unique": ["Reset my VPN", "Printer jam"],
     "duplicates": [{"index": 1, "of_index": 0, "how": "normalised"}],
     "duplicate_count": 1, "truncated": false,
     "count_in": 3, "count_out": 2}

``unique`` keeps input order. Each duplicate names its position in ``items``
(``index``) and the kept item's (``of_index``), not copies of the texts: the answer
stays no bigger than the input however many repeats there are. ``how`` is
``exact`` when the texts are identical and ``normalised`` otherwise. At most
``max_duplicates`` (1..100,000, default 10,000) are listed, in order;
``duplicate_count`` counts them all and ``truncated`` says some were left out. A
text that normalises to nothing (only punctuation or spaces) is compared exactly,
so ``"?"`` and ``"!!"`` stay distinct. Running dedupe on its own ``unique`` output
returns it unchanged.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import regex
from pydantic import Field, StrictBool, StrictInt, StrictStr

from ..config import FleetConfig, LimitsConfig
from ._common import RuleInput

# Invisible format characters (zero-width space, BOM, ...) carry nothing.
_INVISIBLE = regex.compile(r"\p{Cf}+")
# Inside a word, hyphens and apostrophes join ("e-mail" = "email", "won't" = "wont");
# any other punctuation separates ("hello,world" = "hello world").
_JOINER = regex.compile(r"(?<=\w)[\p{Pd}'\u2019\u02bc]+(?=\w)")
_PUNCT = regex.compile(r"\p{P}+")


class DedupeInput(RuleInput):
    items: list[StrictStr] = Field(description="texts to deduplicate, in order")
    normalise: StrictBool = Field(default=True, description="also catch near-duplicates")
    max_duplicates: StrictInt = Field(default=10_000, ge=1, le=100_000)


def normalise(text: str) -> str:
    """The comparison key of a text: NFKC, case-folded, no punctuation, single spaces."""
    # casefold can produce non-NFKC sequences (e.g. from ligatures), so normalise again.
    key = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    key = _INVISIBLE.sub("", key)
    key = _PUNCT.sub(" ", _JOINER.sub("", key))
    return " ".join(key.split())


def check(inp: DedupeInput, limits: LimitsConfig) -> None:
    # The payload byte limit, checked for every rules kind, already bounds the list.
    return None


def run(inp: DedupeInput, config: FleetConfig) -> dict[str, Any]:
    unique: list[str] = []
    duplicates: list[dict[str, Any]] = []
    count = 0
    # key -> index (in items) of the first text with that key
    seen_exact: dict[str, int] = {}
    seen_norm: dict[str, int] = {}
    for index, item in enumerate(inp.items):
        first = seen_exact.get(item)
        if first is None and inp.normalise:
            key = normalise(item)
            if key:
                first = seen_norm.get(key)
                if first is None:
                    seen_norm[key] = index
        if first is None:
            seen_exact[item] = index
            unique.append(item)
            continue
        count += 1
        if len(duplicates) < inp.max_duplicates:
            how = "exact" if item == inp.items[first] else "normalised"
            duplicates.append({"index": index, "of_index": first, "how": how})
    return {
        "unique": unique,
        "duplicates": duplicates,
        "duplicate_count": count,
        "truncated": count > len(duplicates),
        "count_in": len(inp.items),
        "count_out": len(unique),
    }
