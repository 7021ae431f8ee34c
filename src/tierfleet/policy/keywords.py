"""The keyword classifier: the floor under the learned one.

Word lists in the spirit of the home-lab router's (code, reasoning, vision),
extended to every model kind and to a few Chinese cue words. Each kind scores one
point per distinct cue found; the highest score wins, ties go to the kind listed
first. No cue at all means chat, with low confidence, so a session's context can
take over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..jobs import Kind


@dataclass(frozen=True)
class KindGuess:
    kind: Kind
    confidence: float  # 0..1: how sure the classifier is
    method: str  # "learned", "keyword", "images"
    runner_up: Kind | None = None

    def describe(self) -> str:
        alt = f", next {self.runner_up.value}" if self.runner_up else ""
        return f"{self.kind.value} ({self.method}, confidence {self.confidence:.2f}{alt})"


def _words(*ws: str) -> re.Pattern[str]:
    return re.compile(r"(?i)(?<![\w])(?:" + "|".join(ws) + r")(?![\w])")


def _chars(*cs: str) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(c) for c in cs))


_LANGS = (
    r"english|french|german|spanish|italian|portuguese|dutch|russian|chinese|mandarin|"
    r"japanese|korean|arabic|hindi|turkish|polish|swedish|greek|hebrew|vietnamese|ukrainian"
)

# Order matters for ties: the more specific kinds first, chat never listed.
CUES: list[tuple[Kind, list[re.Pattern[str]]]] = [
    (
        Kind.TRANSLATION,
        [
            _words(r"translat\w*", r"traduc\w*", r"traduire", r"übersetz\w*"),
            re.compile(rf"(?i)\b(?:into|to|in)\s+(?:{_LANGS})\b(?!\s+(?:food|history|culture))"),
            _chars("翻译", "翻譯", "译成", "翻訳"),
        ],
    ),
    (
        Kind.SUMMARY,
        [
            _words(
                r"summar\w*", r"tl;?dr", r"sum up", r"recap", r"condense", r"key points",
                r"main points", r"gist", r"abstract of", r"in a nutshell", r"shorten",
            ),
            _chars("总结", "摘要", "概括", "归纳", "要点"),
        ],
    ),
    (
        Kind.EXTRACTION,
        [
            _words(
                r"extract\w*", r"pull out", r"parse", r"find all", r"list all",
                r"named entit\w*", r"fill (?:in )?the (?:fields|form|schema)", r"key-value",
                r"which (?:dates|names|amounts)",
            ),
            _chars("提取", "抽取", "找出", "识别出"),
        ],
    ),
    (
        Kind.CLASSIFICATION,
        [
            _words(
                r"classif\w*", r"categori[sz]\w*", r"sentiment", r"which category",
                r"label (?:this|the|each)", r"spam or not", r"positive or negative",
                r"is this (?:spam|positive|negative|toxic)", r"tag (?:this|each)", r"intent",
            ),
            _chars("分类", "类别", "情感", "归类"),
        ],
    ),
    (
        Kind.CODE,
        [
            _words(
                r"function", r"class", r"debug\w*", r"refactor\w*", r"implement\w*",
                r"write code", r"python", r"javascript", r"typescript", r"api endpoint",
                r"sql", r"regex", r"code", r"program\w*", r"compile\w*", r"stack ?trace",
                r"traceback", r"unit tests?", r"java", r"c\+\+", r"rust", r"golang",
                r"bash", r"script", r"bug", r"algorithm", r"html", r"css", r"json schema",
            ),
            re.compile(r"(?m)^\s*(?:def |class |import |#include|public |fn |func )|```"),
            _chars("代码", "程序", "函数", "编程"),
        ],
    ),
    (
        Kind.REASONING,
        [
            _words(
                r"prove", r"solve", r"calculate", r"math", r"logic", r"reason\w*",
                r"analy[sz]e", r"compare", r"evaluate", r"step by step", r"equation",
                r"integral", r"derivative", r"probability", r"theorem", r"puzzle",
                r"how many", r"how much", r"estimate",
            ),
            re.compile(r"\d\s*[-+*/^×÷=]\s*\d|\\frac|\\sqrt"),
            _chars("计算", "证明", "推理", "数学", "多少"),
        ],
    ),
    (
        Kind.WRITING,
        [
            re.compile(
                r"(?i)\b(?:write|draft|compose|create)\s+(?:me\s+)?(?:a|an|the|some|my)?\s*"
                r"(?:\w+\s+)?(?:poem|story|essay|email|e-mail|letter|blog|article|speech|"
                r"song|lyrics|post|tweet|slogan|description|cover letter|script|review|"
                r"toast|bio|ad|announcement|haiku|limerick)"
            ),
            _words(
                r"rewrite", r"rephrase", r"paraphrase", r"reword", r"proofread",
                r"brainstorm\w*", r"make it (?:more|sound)", r"polish", r"tone",
                r"pretend", r"role-?play", r"imagine you are",
            ),
            _chars("写一", "写出", "改写", "润色", "创作", "头脑风暴", "扮演"),
        ],
    ),
]
_VISION = _words(r"image", r"screenshot", r"picture", r"photo", r"see this", r"what's on")
_UNSURE = 0.30


CUE_KINDS: tuple[Kind, ...] = tuple(k for k, _ in CUES)


def cue_hits(text: str) -> list[int]:
    """Distinct cues found per kind, in CUE_KINDS order (also a feature of the learned models)."""
    return [sum(len(_limited(p, text)) for p in patterns) for _, patterns in CUES]


class KeywordClassifier:
    method = "keyword"

    def classify(self, text: str) -> KindGuess:
        scores: list[tuple[int, int, Kind]] = []
        for order, (kind, hits) in enumerate(zip(CUE_KINDS, cue_hits(text), strict=True)):
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

    @staticmethod
    def mentions_images(text: str) -> bool:
        return _VISION.search(text[:2000]) is not None


def _limited(p: re.Pattern[str], text: str, cap: int = 3) -> list[str]:
    """Distinct matches, at most ``cap``: one cue repeated a hundred times is still one cue."""
    seen: set[str] = set()
    for m in p.finditer(text[:6000]):
        seen.add(m.group(0).lower())
        if len(seen) >= cap:
            break
    return list(seen)
