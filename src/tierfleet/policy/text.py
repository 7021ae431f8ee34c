"""One reading of a prompt that every signal shares: tokens, terms, edges.

Routing must decide in well under a millisecond, so the prompt is tokenised once
here and the keyword cues, the tf-idf terms and the structure features all read
the same ``Doc``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
# A CJK character alone, a run of other letters, a run of digits, or up to three
# punctuation marks ("():", "==", "{", "\\frac" yields "\\" then "frac").
_TOKEN = re.compile(rf"[{CJK}]|[^\W\d_{CJK}]+|\d+|[^\w\s]{{1,3}}")
# The same tokens for text without CJK, about twice as fast (ASCII letters first).
_TOKEN_NO_CJK = re.compile(r"[a-z]+|[^\W\d_]+|\d+|[^\w\s]{1,3}")
_HAS_CJK = re.compile(f"[{CJK}]")
_ZEROS = str.maketrans("123456789", "000000000")
# Prompts sent as the repr of a Python list of strings ("['...']"), as some
# routing datasets and some client libraries do: unwrap them so the words, not
# the quoting, reach the features.
_LIST_REPR = re.compile(r"^\[\s*(['\"])(.*)\1\s*\]$", re.S)
_ESCAPE = re.compile(r"\\(n|t|'|\"|\\)")
_ESCAPES = {"n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\"}

# Only the head and tail of a long prompt are tokenised: that is where the
# instruction sits, and it bounds the cost of a decision.
HEAD_CHARS = 600
TAIL_CHARS = 300
EDGE_TERMS = 6


def normalize_prompt(text: str) -> str:
    """The prompt as the features should see it (list-repr quoting removed)."""
    if len(text) > 4 and text[0] == "[" and text[-1] == "]":
        m = _LIST_REPR.match(text)
        if m:
            body = m.group(2)
            # Several list items: "...', '..." joins them one per line.
            body = re.sub(r"(['\"]),\s*\1", "\n", body)
            return _ESCAPE.sub(lambda e: _ESCAPES[e.group(1)], body)
    return text


def edges(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


# Marks of source code, counted with str.count (C speed) rather than a
# multi-line regex.
CODE_MARKS = (
    "def ", "return ", "import ", "#include", "function ", "public ", "const ", "let ", "var ",
    "fn ", "func ", "class ", ";\n", "{\n", "}\n", "```", "=>", "();", "):\n",
    # Python docstrings and doctests: a function stub sent for completion.
    '"""', ">>> ",
)
_OPTION = re.compile(r"\n\(?[a-e][).:]")


@dataclass(frozen=True, slots=True)
class Doc:
    text: str  # normalised prompt, whole
    edge: str  # lower-cased head and tail
    words: frozenset[str]  # distinct tokens of the edge
    terms: Counter[str]  # unigrams, bigrams, first and last words, with counts
    cjk: bool  # the edge holds CJK characters
    code_marks: int
    options: int


def read_doc(raw: str) -> Doc:
    text = normalize_prompt(raw)
    edge = edges(text).lower()
    cjk = _HAS_CJK.search(edge) is not None
    # Numbers differ everywhere; their length is what carries a signal: every
    # digit becomes 0, so 1984 and 2024 are one term.
    toks = (_TOKEN if cjk else _TOKEN_NO_CJK).findall(edge.translate(_ZEROS))
    terms = Counter(toks)
    terms.update([f"{a} {b}" for a, b in pairwise(toks)])
    # Where the instruction usually sits: the first and the last few words.
    terms.update([f"^{t}" for t in toks[:EDGE_TERMS]])
    terms.update([f"${t}" for t in toks[-EDGE_TERMS:]])
    return Doc(
        text,
        edge,
        frozenset(toks),
        terms,
        cjk,
        sum(map(edge.count, CODE_MARKS)),
        len(_OPTION.findall(edge)) if "\n" in edge else 0,
    )
