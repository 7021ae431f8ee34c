"""The keyword classifier: the floor under the learned one.

Word lists in the spirit of the home-lab router's (code, reasoning, vision),
extended to every model kind and to a few Chinese cue words. Each kind scores one
point per distinct cue found (stems at most three); the highest score wins, ties
go to the kind listed first. No cue at all means chat, with low confidence, so a
session's context can take over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..jobs import Kind
from .text import Doc, read_doc


@dataclass(frozen=True)
class KindGuess:
    kind: Kind
    confidence: float  # 0..1: how sure the classifier is
    method: str  # "learned", "keyword", "images"
    runner_up: Kind | None = None

    def describe(self) -> str:
        alt = f", next {self.runner_up.value}" if self.runner_up else ""
        return f"{self.kind.value} ({self.method}, confidence {self.confidence:.2f}{alt})"


@dataclass(frozen=True)
class Cues:
    """One kind's cues. A cue is a word, a word stem (``"summar*"``), a phrase, a
    substring (for CJK and for words with inner punctuation, like "tl;dr"), a pair
    of word sets that must both occur, or a structural regex."""

    words: frozenset[str] = frozenset()
    stems: tuple[str, ...] = ()
    phrases: tuple[tuple[str, str | None], ...] = ()  # (first two words, whole if longer)
    subs: tuple[str, ...] = ()
    pairs: tuple[tuple[frozenset[str], frozenset[str]], ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()


def _cues(
    terms: str,
    subs: str = "",
    pairs: tuple[tuple[str, str], ...] = (),
    patterns: tuple[str, ...] = (),
) -> Cues:
    items = [t.strip() for t in terms.split(",") if t.strip()]
    return Cues(
        words=frozenset(t for t in items if " " not in t and not t.endswith("*")),
        stems=tuple(t[:-1] for t in items if t.endswith("*")),
        phrases=tuple(
            (" ".join(t.split(" ")[:2]), t if t.count(" ") > 1 else None) for t in items if " " in t
        ),
        subs=tuple(c for c in subs.split() if c),
        pairs=tuple((frozenset(a.split()), frozenset(b.split())) for a, b in pairs),
        patterns=tuple(re.compile(p) for p in patterns),
    )


_LANGS = (
    "english", "french", "german", "spanish", "italian", "portuguese", "dutch", "russian",
    "chinese", "mandarin", "japanese", "korean", "arabic", "hindi", "turkish", "polish",
    "swedish", "greek", "hebrew", "vietnamese", "ukrainian",
)

# Order matters for ties: the more specific kinds first; chat is what is left.
CUES: list[tuple[Kind, Cues]] = [
    (
        Kind.TRANSLATION,
        _cues(
            "translat*, traduc*, traduire, übersetz*, locali*, how do you say, how to say, "
            "speaker say, equivalent in, from english, "
            + ", ".join(f"{p} {lang}" for p in ("into", "to", "in") for lang in _LANGS),
            subs="翻译 翻譯 译成 翻訳",
        ),
    ),
    (
        Kind.SUMMARY,
        _cues(
            "summar*, tldr, sum up, recap, condense, key points, main points, gist, "
            "in a nutshell, shorten, digest, boil, abstract of, short version, shorter version, "
            "highlights, takeaways, synopsis, overview of, briefly, what is it about",
            subs="tl;dr 总结 摘要 概括 归纳 要点",
        ),
    ),
    (
        Kind.EXTRACTION,
        _cues(
            "extract*, pull out, pull every, pull the, parse, find all, list all, list every, "
            "list the dates, list the names, named entities, entities, fill in the fields, "
            "which dates, which names, names of, email addresses, phone numbers, output json, "
            "as json, json with, json list, into json, fields",
            subs="key-value 提取 抽取 找出 识别出",
        ),
    ),
    (
        Kind.CLASSIFICATION,
        _cues(
            "classif*, categori*, sentiment, which category, label this, label the, label each, "
            "spam or not, spam or ham, positive or negative, positive, negative, is this spam, "
            "tag this, tag each, intent, which team, right team, route this, which department, "
            "assign a, priority, toxic, hate speech, what language is, detect the language, "
            "happy or sad, angry or, urgent or",
            subs="分类 类别 情感 归类",
        ),
    ),
    (
        Kind.CODE,
        _cues(
            "function, class, debug*, refactor*, implement*, write code, python, javascript, "
            "typescript, api endpoint, sql, regex, code, program*, compil*, stack trace, "
            "stacktrace, traceback, unit test, unit tests, java, rust, golang, bash, script, "
            "bug, algorithm, html, css, json schema, dockerfile, docker, kubernetes, yaml, pandas, "
            "numpy, react, node, npm, pip, git, github, handler, http, api, endpoint, query, "
            "database, postgres, mysql, sqlite, list comprehension, variable, array, method, "
            "exception, segmentation fault, null pointer, syntax, library, flask, django, "
            "fastapi, kotlin, swift, interface, jest, pytest, server, crash*, deploy*, container, "
            "runtime, frontend, backend",
            subs="c++ c# 代码 程序 函数 编程",
        ),
    ),
    (
        Kind.REASONING,
        _cues(
            "prove, solve, calculate, math, logic, reason*, analyze, analyse, compare, evaluate, "
            "step by step, equation, integral, derivative, probability, theorem, puzzle, "
            "how many, how much, estimate, show the steps, show your work, how long, how far, "
            "sum of, average of, percent, percentage, ratio, odds, riddle, taller than, "
            "older than, explain your reasoning",
            subs="计算 证明 推理 数学 多少",
            patterns=(r"\d\s*[-+*/^×÷=]\s*\d|\\frac|\\sqrt",),  # noqa: RUF001
        ),
    ),
    (
        Kind.WRITING,
        _cues(
            "rewrite, rephrase, paraphrase, reword, proofread, brainstorm*, make it more, "
            "make it sound, polish, tone, pretend, roleplay, imagine you are, catchy, tagline, "
            "taglines, slogan, slogans, motivational, heartfelt, names for, name ideas, "
            "landing page, job ad, sound more, plain english",
            subs="role-play 写一 写出 改写 润色 创作 头脑风暴 扮演",
            pairs=(
                (
                    "write draft compose create craft",
                    "poem story essay email mail letter blog article speech song lyrics post "
                    "tweet slogan slogans description caption toast bio announcement haiku "
                    "limerick novel message note reminder reply invitation apology ad copy text "
                    "paragraph intro introduction outline newsletter headline tagline motto "
                    "welcome",
                ),
            ),
        ),
    ),
]
_UNSURE = 0.30


CUE_KINDS: tuple[Kind, ...] = tuple(k for k, _ in CUES)
_CODE = CUE_KINDS.index(Kind.CODE)


def _index() -> tuple[
    dict[str, list[int]], dict[str, list[tuple[int, str | None]]], dict[str, list[tuple[str, int]]]
]:
    words: dict[str, list[int]] = {}
    phrases: dict[str, list[tuple[int, str | None]]] = {}
    stems: dict[str, list[tuple[str, int]]] = {}
    for k, (_, c) in enumerate(CUES):
        for w in c.words:
            words.setdefault(w, []).append(k)
        for two, whole in c.phrases:
            phrases.setdefault(two, []).append((k, whole))
        for st in c.stems:
            stems.setdefault(st[:3], []).append((st, k))
    return words, phrases, stems


# One lookup table for every kind: a prompt's words are matched against all cues
# in a single set intersection instead of kind by kind.
_WORD_INDEX, _PHRASE_INDEX, _STEM_INDEX = _index()
_SUBS = [(sub, k) for k, (_, c) in enumerate(CUES) for sub in c.subs]
_PAIRS = [(a, b, k) for k, (_, c) in enumerate(CUES) for a, b in c.pairs]
_PATTERNS = [(p, k) for k, (_, c) in enumerate(CUES) for p in c.patterns]


def cue_hits(doc: Doc) -> list[int]:
    """Distinct cues found per kind, in CUE_KINDS order (also a feature of the learned models)."""
    hits = [0] * len(CUES)
    for w in _WORD_INDEX.keys() & doc.words:
        for k in _WORD_INDEX[w]:
            hits[k] += 1
    edge = doc.edge
    # A phrase's first two words are a bigram term; a longer phrase is then
    # confirmed in the text.
    for two in _PHRASE_INDEX.keys() & doc.terms.keys():
        for k, whole in _PHRASE_INDEX[two]:
            if whole is None or whole in edge:
                hits[k] += 1
    stem_hits = [0] * len(CUES)
    for w in doc.words:
        if len(w) >= 5 and w[:3] in _STEM_INDEX:
            for st, k in _STEM_INDEX[w[:3]]:
                if w.startswith(st):
                    stem_hits[k] += 1
    for k in range(len(CUES)):
        hits[k] += min(3, stem_hits[k])
    for sub, k in _SUBS:
        if sub in edge:
            hits[k] += 1
    words = doc.words
    for a, b, k in _PAIRS:
        if not a.isdisjoint(words) and not b.isdisjoint(words):
            hits[k] += 1
    for p, k in _PATTERNS:
        if p.search(edge):
            hits[k] += 1
    if doc.code_marks >= 2:
        hits[_CODE] += 1  # source code in the prompt is itself a cue
    return hits


class KeywordClassifier:
    method = "keyword"

    def classify(self, text: str) -> KindGuess:
        return self.classify_doc(read_doc(text))

    def classify_doc(self, doc: Doc) -> KindGuess:
        return self.from_hits(cue_hits(doc))

    def from_hits(self, cue_counts: list[int]) -> KindGuess:
        scores: list[tuple[int, int, Kind]] = []
        for order, (kind, hits) in enumerate(zip(CUE_KINDS, cue_counts, strict=True)):
            if hits:
                scores.append((hits, -order, kind))
        if not scores:
            return KindGuess(Kind.CHAT, _UNSURE, self.method)
        scores.sort(reverse=True)
        best, second = scores[0], scores[1] if len(scores) > 1 else None
        margin = best[0] - (second[0] if second else 0)
        conf = min(0.95, 0.55 + 0.1 * margin + (0.1 if second is None else 0.0))
        return KindGuess(best[2], conf, self.method, second[2] if second else None)

    def classify_many(self, texts: list[str]) -> list[KindGuess]:
        return [self.classify(t) for t in texts]
