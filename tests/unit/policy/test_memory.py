"""The bad-answer memory and its policy stage: similar prompts move up, the memory stays bounded."""

from __future__ import annotations

import numpy as np
import pytest

from tierfleet.config import load_config
from tierfleet.jobs import Job, Kind, Privacy, Risk
from tierfleet.policy import Policy
from tierfleet.policy.memory import BadAnswerMemory, ListStore, prompt_vector
from tierfleet.policy.stages import SimilarBadAnswer, with_memory

FAILED = "Summarize the attached quarterly revenue report for the board, focusing on churn and margin."
SIMILAR = "Summarize the attached quarterly revenue report for the board, focusing on margin and churn!"
OTHER = "Translate 'where is the train station' into Portuguese."
DAY = 86_400.0


def _policy(memory: BadAnswerMemory) -> Policy:
    return Policy(load_config(), stages=with_memory(memory))


def test_similar_prompt_moves_above_the_failed_tier_with_a_reason() -> None:
    memory = BadAnswerMemory()
    policy = _policy(memory)
    before = policy.route(Job(prompt=SIMILAR, kind=Kind.SUMMARY))
    memory.add(FAILED, before.tier, now=0.0, job_id="job-41")
    after = policy.route(Job(prompt=SIMILAR, kind=Kind.SUMMARY))
    assert policy.fleet.rank[after.tier] > policy.fleet.rank[before.tier]
    reason = next(r for r in after.reasons if r.stage == "memory")
    assert "job-41" in reason.text and before.tier in reason.text and after.tier in reason.text
    # A different request is not touched.
    other = policy.route(Job(prompt=OTHER, kind=Kind.TRANSLATION))
    assert all(r.stage != "memory" for r in other.reasons)


def test_memory_never_breaks_privacy_or_an_explicit_tier() -> None:
    memory = BadAnswerMemory()
    policy = _policy(memory)
    small = policy.fleet.small_tier
    assert small is not None
    memory.add(FAILED, small, now=0.0)
    secret = policy.route(Job(prompt=SIMILAR, kind=Kind.SUMMARY, privacy=Privacy.CONFIDENTIAL))
    assert policy.fleet.place[secret.tier] == "local"
    pinned = policy.route(Job(prompt=SIMILAR, kind=Kind.SUMMARY, tier=small))
    assert pinned.tier == small
    risky = policy.route(Job(prompt=SIMILAR, kind=Kind.SUMMARY, risk=Risk.HIGH))
    assert all(r.stage != "memory" for r in risky.reasons)


def test_bounded_in_size_and_age() -> None:
    memory = BadAnswerMemory(max_size=3, max_age_s=2 * DAY)
    for i in range(5):
        memory.add(f"prompt number {i} about topic {i * 7}", "local-mac", now=i * 1.0)
    assert len(memory) == 3
    assert [e.at for e in memory.entries] == [2.0, 3.0, 4.0]  # the oldest went first
    assert memory.prune(now=4.0 + 2 * DAY - 1.5) == 1  # the entry of t=2 is now too old
    assert memory.prune(now=10 * DAY) == 2
    assert len(memory) == 0 and memory.nearest_text(FAILED) is None


def test_threshold_separates_rephrasing_from_another_request() -> None:
    memory = BadAnswerMemory()
    memory.add(FAILED, "local-mac", now=0.0)
    near = memory.nearest_text(SIMILAR)
    assert near is not None and near.similarity > memory.threshold + 0.1
    assert memory.nearest_text(OTHER) is None
    v = prompt_vector(FAILED)
    assert v.shape == (memory.dim,) and float(v @ v) == pytest.approx(1.0)


def test_store_round_trip_is_json_and_drops_expired_entries() -> None:
    import json

    memory = BadAnswerMemory(max_age_s=DAY)
    memory.add(FAILED, "local-mac", now=0.0, job_id="a", note="judge 2/10")
    memory.add(OTHER, "local-gpu", now=0.5 * DAY, job_id="b")
    store = ListStore()
    memory.save(store)
    json.dumps(store.entries)  # what a Redis or file store would write
    again = BadAnswerMemory(max_age_s=DAY)
    assert again.load(store, now=1.2 * DAY) == 1  # "a" has expired meanwhile
    (entry,) = again.entries
    assert entry.job_id == "b" and entry.tier == "local-gpu"
    np.testing.assert_allclose(entry.vector, prompt_vector(OTHER), atol=1e-6)


def test_stage_passes_when_memory_is_empty() -> None:
    stage = SimilarBadAnswer(BadAnswerMemory())
    policy = Policy(load_config(), stages=with_memory(stage.memory))
    plain = Policy(load_config())
    job = Job(prompt=SIMILAR, kind=Kind.SUMMARY)
    assert policy.route(job).model_dump() == plain.route(job).model_dump()
    with pytest.raises(ValueError):
        BadAnswerMemory(max_size=0)
