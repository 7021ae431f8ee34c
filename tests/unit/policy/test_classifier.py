"""Kind classification and p_small_ok: the shipped models, the keyword floor, training."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tierfleet.config import load_config
from tierfleet.jobs import Job, Kind
from tierfleet.policy import KeywordClassifier, Policy, Reader, load_models
from tierfleet.policy.features import DENSE_NAMES, Vocabulary, dense
from tierfleet.policy.models import KIND_FILE, META_FILE, SMALL_OK_FILE, shipped_dir
from tierfleet.policy.text import normalize_prompt, read_doc
from tierfleet.policy.training import load_user_labels, train

# Written for this test: plain requests whose kind a person would not argue about.
CLEAR: list[tuple[str, Kind]] = [
    ("Please summarize the following article in three sentences: The city opened a new park "
     "with a lake, two playgrounds and a cafe; it cost 4 million and took two years.", Kind.SUMMARY),
    ("Give me a one-line summary of this email: Hi all, Friday's demo is cancelled because the "
     "client is travelling. We will reschedule next week.", Kind.SUMMARY),
    ("TL;DR this: the vendor raised prices 12%, we are looking at two alternatives, decision "
     "by end of month.", Kind.SUMMARY),
    ("Translate this sentence into German: Where is the train station?", Kind.TRANSLATION),
    ("Translate to French: Our office is closed on Monday.", Kind.TRANSLATION),
    ("How do you say 'good luck with the exam' in Spanish?", Kind.TRANSLATION),
    ("Extract all email addresses from this text: contact anna@example.com or "
     "sales@example.org for details.", Kind.EXTRACTION),
    ("Extract the invoice number, date and total amount from: Invoice 2231, 3 March 2024, "
     "total 412.50 EUR.", Kind.EXTRACTION),
    ("List all the people mentioned in this paragraph: Tom met Sara and Ravi at the station.",
     Kind.EXTRACTION),
    ("Classify the sentiment of this review as positive or negative: The battery died after "
     "one day.", Kind.CLASSIFICATION),
    ("Categorize this support ticket as billing, technical or account: I cannot reset my "
     "password.", Kind.CLASSIFICATION),
    ("Is this message spam or not spam? 'You have won a prize, send your bank details.'",
     Kind.CLASSIFICATION),
    ("Write a Python function that checks whether a number is prime.", Kind.CODE),
    ("Fix the bug in this JavaScript: for (let i = 0; i <= items.length; i++) "
     "{ total += items[i].price; }", Kind.CODE),
    ("Write a SQL query that returns the five most recent orders per customer.", Kind.CODE),
    ("Refactor this class to use dependency injection:\nclass Mailer:\n    def __init__(self):\n"
     "        self.client = SmtpClient()", Kind.CODE),
    ("Solve for x: 4x - 7 = 21.", Kind.REASONING),
    ("A shop sells apples at 3 for $2. How much do 12 apples cost? Show your reasoning.",
     Kind.REASONING),
    ("Prove that the sum of two even numbers is even.", Kind.REASONING),
    ("What is the probability of getting exactly two heads in three coin tosses?", Kind.REASONING),
    ("Write a short poem about the first snow of winter.", Kind.WRITING),
    ("Draft an email to my landlord asking to fix the heating.", Kind.WRITING),
    ("Write a short story about a lighthouse keeper who finds a message in a bottle.",
     Kind.WRITING),
    ("Rewrite this paragraph to sound more formal: hey guys, the thing is late again, sorry.",
     Kind.WRITING),
    ("What is the capital of Canada?", Kind.CHAT),
    ("Who wrote Pride and Prejudice?", Kind.CHAT),
    ("Why do leaves change colour in autumn?", Kind.CHAT),
    ("What are some good exercises for lower back pain?", Kind.CHAT),
]


def accuracy(pred: list[Kind], truth: list[Kind]) -> float:
    return sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)


def test_learned_classifier_beats_the_trivial_baselines() -> None:
    texts, truth = [p for p, _ in CLEAR], [k for _, k in CLEAR]
    learned = [s.guess.kind for s in Reader("learned", load_models()).read_many(texts)]
    keyword = [KeywordClassifier().classify(t).kind for t in texts]
    always_chat = accuracy([Kind.CHAT] * len(truth), truth)
    # The largest class of the set, as a majority-class baseline would guess.
    majority = max(accuracy([k] * len(truth), truth) for k in set(truth))
    assert accuracy(learned, truth) >= 0.8
    assert accuracy(learned, truth) > max(always_chat, majority) + 0.5
    assert accuracy(keyword, truth) > always_chat + 0.4


def test_learned_guesses_carry_confidence_and_a_runner_up() -> None:
    sig = Reader("learned", load_models()).read("Write a haiku about rain.")
    assert sig.guess.method == "learned"
    assert 0.0 < sig.guess.confidence <= 1.0
    assert sig.guess.runner_up is not None and sig.guess.runner_up is not sig.guess.kind
    assert 0.0 <= sig.p_small_ok <= 1.0 and sig.p_method == "learned"


def test_keyword_classifier_cues() -> None:
    k = KeywordClassifier()
    assert k.classify("Summarize this for me").kind is Kind.SUMMARY
    assert k.classify("请把这段话翻译成英文").kind is Kind.TRANSLATION
    assert k.classify("def add(a, b):\n    return a + b\n\nWhy does this fail?").kind is Kind.CODE
    unsure = k.classify("hello there")
    assert unsure.kind is Kind.CHAT and unsure.confidence < 0.5


def test_p_small_ok_is_lower_for_hard_prompts() -> None:
    r = Reader("learned", load_models())
    easy = r.read("What is the capital of France?").p_small_ok
    hard = r.read(
        "Q: There are 5 houses in a row. Each person has a different pet, drink and car. "
        "The person who owns a truck lives directly left of the tea drinker. The cat owner "
        "is not in house 1 or 5. Who owns the fish? Reason through every constraint. " * 6
    ).p_small_ok
    assert easy > hard


def test_shipped_artifacts_are_small_json_and_npz_without_pickles() -> None:
    folder = shipped_dir()
    files = [folder / KIND_FILE, folder / SMALL_OK_FILE, folder / META_FILE]
    assert all(f.exists() for f in files)
    assert sum(f.stat().st_size for f in files) < 5_000_000
    for f in files[:2]:
        with np.load(f, allow_pickle=False) as z:  # raises on any object array
            assert all(z[k].dtype != object for k in z.files)
        with zipfile.ZipFile(f) as zf:
            assert all(n.endswith(".npy") for n in zf.namelist())
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    assert meta["task_kinds"]["gsm8k"] == "reasoning"
    assert meta["label_kinds"]["summarization"] == "summary"
    models = load_models()
    assert models.kind is not None and models.small_ok is not None and not models.problems
    assert models.small_ok.vocab is models.kind.vocab  # one vocabulary, one encoding per prompt


def test_missing_artifacts_fall_back_to_keywords_and_a_length_prior(tmp_path: Path) -> None:
    models = load_models(str(tmp_path))
    assert models.kind is None and models.small_ok is None
    assert any("missing" in p for p in models.problems)
    policy = Policy(load_config(), models=models)
    route = policy.route(Job(prompt="Translate 'hello' into Greek."))
    assert route.kind is Kind.TRANSLATION
    said = "\n".join(route.explain())
    assert "keyword" in said and "length prior" in said
    assert route.p_small_ok is not None and 0.0 < route.p_small_ok < 1.0


def test_prompt_normalisation_and_features() -> None:
    assert normalize_prompt("['Line one\\nLine two']") == "Line one\nLine two"
    assert normalize_prompt("['a', 'b']") == "a\nb"
    assert normalize_prompt("[1, 2, 3]") == "[1, 2, 3]"
    doc = read_doc("Write a function in Python 3.12 that returns 42.")
    assert "python" in doc.terms and "^write" in doc.terms and "00" in doc.terms
    assert len(dense(doc, 12)) == len(DENSE_NAMES)
    vocab = Vocabulary.fit([doc.terms, read_doc("write python code").terms], min_df=2)
    idx, w = vocab.encode(doc.terms)
    assert idx.size == len(vocab) and np.isclose(np.linalg.norm(w), 1.0)


def _labels(path: Path) -> Path:
    rows = []
    for i in range(15):
        rows.append({"prompt": f"Summarize meeting notes number {i} about the budget.", "kind": "summary",
                     "small_ok": 1})
        rows.append({"prompt": f"Prove theorem {i} about prime gaps with full rigour.", "kind": "reasoning",
                     "small_score": 0.0, "large_score": 1.0})
    lines = [json.dumps(r) for r in rows] + ["not json", json.dumps({"kind": "code"}),
                                             json.dumps({"prompt": "x", "kind": "poetry"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_labels_are_parsed_and_bad_lines_named(tmp_path: Path) -> None:
    kinds, oks, problems = load_user_labels(_labels(tmp_path / "labels.jsonl"))
    assert len(kinds) == 30 and len(oks) == 30
    assert {r.small_ok for r in oks} == {0.0, 1.0}
    assert len(problems) == 3
    assert any("not JSON" in p for p in problems) and any("poetry" in p for p in problems)


def test_training_on_own_labels_is_reproducible(tmp_path: Path) -> None:
    labels = _labels(tmp_path / "labels.jsonl")
    a = train(out=tmp_path / "a", labels=labels)
    train(out=tmp_path / "b", labels=labels)
    assert a["kind"]["rows"] == 30 and a["small_ok"]["rows"] == 30
    for name in (KIND_FILE, SMALL_OK_FILE):
        with np.load(tmp_path / "a" / name) as x, np.load(tmp_path / "b" / name) as y:
            assert x.files == y.files
            for k in x.files:
                assert np.array_equal(x[k], y[k]), (name, k)
    trained = load_models(str(tmp_path / "a"))
    assert trained.kind is not None and sorted(trained.kind.classes) == ["reasoning", "summary"]
    r = Reader("learned", trained)
    assert r.read("Summarize meeting notes about the budget.").guess.kind is Kind.SUMMARY


def test_a_model_without_enough_labels_is_kept(tmp_path: Path) -> None:
    labels = tmp_path / "few.jsonl"
    labels.write_text(json.dumps({"prompt": "hi", "kind": "chat"}) + "\n", encoding="utf-8")
    summary = train(out=tmp_path / "out", labels=labels)
    assert "kept" in summary["kind"] and "kept" in summary["small_ok"]
    for name in (KIND_FILE, SMALL_OK_FILE):
        assert (tmp_path / "out" / name).read_bytes() == (shipped_dir() / name).read_bytes()


@pytest.mark.parametrize(
    ("raw", "seen"),
    [("[1, 2", "[1, 2"), ('{"a": 1}', '{"a": 1}'), ('["x"]', "x"), ("[see above]", "[see above]")],
)
def test_normalize_unwraps_only_string_list_reprs(raw: str, seen: str) -> None:
    assert normalize_prompt(raw) == seen
