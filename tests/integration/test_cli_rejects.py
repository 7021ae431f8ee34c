"""`tierfleet submit` with hostile input: one line on stderr naming the field, exit 2,
no traceback, for prompt arguments, --input and --file JSONL alike. Rejection happens
before Redis is needed, so no server runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEEP = "[" * 10_000 + "]" * 10_000


def submit(*args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TIERFLEET_REDIS_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run(
        [sys.executable, "-m", "tierfleet", "submit", *args],
        input=stdin, capture_output=True, env=env, timeout=120,
    )


def one_line_error(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = proc.stderr.decode("utf-8")  # must be valid UTF-8 even for surrogate input
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), err
    joined = " ".join(ln.strip() for ln in lines)
    for w in words:
        assert w in joined, joined
    return joined


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--kind", "dedupe", "--input", '{"items": ["\\ud800"]}'], ["input.items[0]", "surrogate"]),
        (["--kind", "json_validate", "--input", '{"document": NaN, "schema": {}}'], ["--input", "NaN"]),
        (["--kind", "json_validate", "--input", '{"document": ' + DEEP + ', "schema": {}}'], ["--input"]),
        (["--kind", "json_validate", "--input", '{"document": ' + "[" * 100 + "]" * 100
          + ', "schema": {}}'], ["input.document", "max_json_depth"]),
        (["--kind", "dedupe", "--input", '{"items": [1], "[/x]": 2}'], ["input"]),
        (["--kind", "dedupe", "--input", '"just a string"'], ["input"]),
        ([b"bad \xff\xfe bytes"], ["prompt", "surrogate"]),
    ],
)
def test_bad_input_through_arguments(args: list[str | bytes], words: list[str]) -> None:
    one_line_error(submit(*args), *words)


def test_bad_jsonl_lines(tmp_path: Path) -> None:
    f = tmp_path / "jobs.jsonl"
    f.write_bytes(json.dumps({"kind": "summary", "prompt": "fine"}).encode() + b"\n"
                  + b'{"kind": "summary", "prompt": "x", "max_cost_usd": Infinity}\n')
    one_line_error(submit("--file", str(f)), "jobs.jsonl:2")
    f.write_bytes(b'{"kind": "summary", "prompt": "ok"}\n{"kind": "summary", "prompt": "\\udfff"}\n')
    one_line_error(submit("--file", str(f)), "[1].prompt", "surrogate")
    f.write_bytes(b'{"kind": "summary", "prompt": "\xff"}\n')
    one_line_error(submit("--file", str(f)), "not UTF-8")
    one_line_error(submit("--file", "-", stdin=DEEP.encode() + b"\n"), "nested too deeply")
    one_line_error(submit("--file", "-", stdin=b'"a string"\n'), "JSON object")
    one_line_error(submit("--file", "-", stdin=b'{"kind": "vision", "prompt": "x", "images": ["zz"]}\n'),
                   "images[0]", "base64")


@pytest.mark.parametrize("command", [["submit", "hi", "--wait"], ["result", "some-id"]])
def test_a_nan_timeout_is_one_line_not_a_wait_for_ever(command: list[str]) -> None:
    """click reads "nan" as a float; a NaN deadline is never reached (the command hung)."""
    env = {**os.environ, "TIERFLEET_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run([sys.executable, "-m", "tierfleet", *command, "--timeout", "nan"],
                          capture_output=True, env=env, timeout=60)
    one_line_error(proc, "--timeout", "nan")
