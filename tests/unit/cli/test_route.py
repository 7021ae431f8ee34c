"""`tierfleet route` (one prompt and --batch) and `tierfleet train`, through the real CLI app."""

from __future__ import annotations

import json
import random
from pathlib import Path

from typer.testing import CliRunner

from tierfleet.cli import app

runner = CliRunner()

KINDS_OF_ASK = [
    "Summarize this note: the {x} review moved to Thursday and the budget is frozen.",
    "Translate into Spanish: the {x} shop opens at nine.",
    "Write a Python function that parses {x} timestamps.",
    "What is the capital of {x}?",
    "If {x} apples cost 6 dollars, how much do 10 cost?",
    "Extract every date from this text about {x}: 3 May, 9 June.",
    "Classify this review of {x} as positive or negative: it broke in a day.",
    "Write a short poem about {x}.",
]


def _batch(path: Path, n: int) -> list[dict[str, object]]:
    rng = random.Random(5)
    rows: list[dict[str, object]] = []
    for i in range(n):
        row: dict[str, object] = {
            "id": f"job-{i}",
            "prompt": rng.choice(KINDS_OF_ASK).format(x=rng.choice(["Lisbon", "Kenya", "cats", "12"])),
        }
        if i % 7 == 0:
            row["privacy"] = "confidential"
        if i % 11 == 0:
            row["team"] = "growth"  # not a job field: ignored, counted
        rows.append(row)
    lines = [json.dumps(r) for r in rows]
    lines[10] = "{not json"
    lines[20] = json.dumps({"id": "job-20", "prompt": "   "})
    lines[30] = json.dumps({"id": "job-30", "prompt": "hi", "tier": "paid", "privacy": "confidential"})
    lines[40] = json.dumps(["a", "list"])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def test_batch_output_has_one_line_per_input_in_order(tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = _batch(src, 300)
    result = runner.invoke(app, ["route", "--batch", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(got) == 300
    assert [g["line"] for g in got] == list(range(1, 301))
    errors = {g["line"]: g["error"] for g in got if "error" in g}
    assert set(errors) == {11, 21, 31, 41}
    assert "not JSON" in errors[11] and "prompt" in errors[21]
    assert errors[31].startswith("tier: ") and "confidential" in errors[31]
    assert "JSON object" in errors[41]
    for i, g in enumerate(got):
        if "error" in g:
            continue
        assert g["id"] == rows[i]["id"]
        assert isinstance(g["kind"], str) and isinstance(g["tier"], str) and isinstance(g["model"], str)
        assert isinstance(g["p_small_ok"], float) and 0.0 <= g["p_small_ok"] <= 1.0
        assert isinstance(g["reasons"], list) and all(isinstance(r, str) for r in g["reasons"])
        assert g["reasons"] and g["tokens_in"] > 0
        if rows[i].get("privacy") == "confidential":
            assert g["tier"] in {"rules", "local-mac", "local-gpu"}
            assert not set(g["fallbacks"]) - {"rules", "local-mac", "local-gpu"}
    kinds = {g["kind"] for g in got if "kind" in g}
    assert {"summary", "translation", "code", "chat"} <= kinds
    said = " ".join(result.output.split())
    assert "ignored unknown fields on 28 lines (team x28)" in said
    assert "routed 296 of 300 jobs" in said


def test_batch_reads_stdin_and_writes_stdout() -> None:
    text = "\n".join(json.dumps({"prompt": p}) for p in ["Why is the sky blue?", "Solve 2x = 10."]) + "\n"
    result = runner.invoke(app, ["route", "--batch", "-"], input=text)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [x["line"] for x in lines] == [1, 2]
    assert lines[0]["kind"] == "chat"


def test_single_route_json_and_explain() -> None:
    result = runner.invoke(app, ["route", "Write a Go function that reverses a slice.", "--json"])
    assert result.exit_code == 0, result.output
    route = json.loads(result.stdout)
    assert route["kind"] == "code" and route["tier"] == "local-gpu"
    assert route["reasons"] and route["reasons"][0]["stage"] == "classify"
    shown = runner.invoke(
        app,
        ["route", "Summarize: sales up 3%.", "--privacy", "confidential", "--risk", "high", "--explain"],
    )
    assert shown.exit_code == 0, shown.output
    for words in ("reasons", "privacy=confidential", "marked for review", "tiers for this job"):
        assert words in shown.stdout


def test_route_flags_reach_the_policy(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"queue_depth": {"local-gpu": 50}, "service_time_s": {"local-gpu": 5}}))
    result = runner.invoke(
        app,
        ["route", "Implement a binary search in C.", "--latency-budget", "2",
         "--state", f"@{state}", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tier"] == "runpod"
    sticky = runner.invoke(
        app, ["route", "and now?", "--session", "s1", "--recent", "code,code,code", "--json"]
    )
    assert json.loads(sticky.stdout)["kind"] == "code"
    bad = runner.invoke(app, ["route", "hello", "--tier", "paid", "--privacy", "confidential"])
    assert bad.exit_code == 2
    assert "tier: " in bad.output


def test_train_command_writes_models(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    rows = [{"prompt": f"Translate sentence {i} into Dutch.", "kind": "translation", "small_ok": 1}
            for i in range(12)]
    rows += [{"prompt": f"Debug stack trace number {i} in the Java service.", "kind": "code", "small_ok": 0}
             for i in range(12)]
    labels.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "models"
    result = runner.invoke(app, ["train", "--labels", str(labels), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"kind.npz", "small_ok.npz", "meta.json"}
    assert "TIERFLEET_POLICY_ARTIFACTS" in result.stdout
    missing = runner.invoke(app, ["train", "--labels", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2
