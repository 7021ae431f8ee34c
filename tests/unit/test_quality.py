"""When a cheap answer is not good enough to keep (and the worker escalates it)."""

from __future__ import annotations

import pytest

from tierfleet.backends.base import Completion
from tierfleet.jobs import Job
from tierfleet.quality import check


def _c(text: str, finish: str = "stop", simulated: bool = False) -> Completion:
    return Completion(text=text, model="m", host="h", finish_reason=finish, simulated=simulated)


@pytest.mark.parametrize(
    ("job", "completion", "ok", "why"),
    [
        (Job(prompt="x"), _c("A fine answer."), True, ""),
        (Job(prompt="x"), _c("   "), False, "empty"),
        (Job(prompt="x"), _c("Half an ans", "length"), False, "token limit"),
        (Job(prompt="x", max_tokens=5), _c("Half an ans", "length"), True, ""),
        (Job(prompt="x"), _c("I'm sorry, but I can't help with that."), False, "refused"),
        (Job(prompt="x"), _c("The error says: I'm sorry, but the disk is full."), True, ""),
        (Job(prompt="x", json_output=True), _c('{"a": 1}'), True, ""),
        (Job(prompt="x", json_output=True), _c('```json\n{"a": 1}\n```'), True, ""),
        (Job(prompt="x", json_output=True), _c("{a: 1"), False, "invalid JSON"),
        (Job(prompt="x"), _c("[simulated qwen3:4b] ", simulated=True), False, "empty"),
    ],
)
def test_quality_check(job: Job, completion: Completion, ok: bool, why: str) -> None:
    verdict = check(job, completion)
    assert verdict.ok is ok
    assert why in verdict.reason
