"""The answer cache: exact matches only, never across privacy levels, never against a job's wish."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest

from tierfleet.cache import AnswerCache, cache_key
from tierfleet.config import FleetConfig
from tierfleet.jobs import Job, Message

ANSWER = {"text": "The VPN client drops because its token expired.", "host": "mac"}


def fleet(**cache: Any) -> FleetConfig:
    return FleetConfig(
        key_prefix="tfc",
        tiers={"local-mac": {"place": "local"}},
        policy={"kind_tiers": {"summary": "local-mac"}},
        cache=cache,
    )


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def job(**kw: Any) -> Job:
    base: dict[str, Any] = {"kind": "summary", "prompt": "Summarise this thread:  VPN drops."}
    base.update(kw)
    return Job(**base)


def test_hit_on_the_same_question_and_its_normalised_twin(r: fakeredis.FakeRedis) -> None:
    cache = AnswerCache(r, fleet())
    assert cache.get(job(), "qwen3:4b") is None
    cache.put(job(), "qwen3:4b", ANSWER)
    hit = cache.get(job(), "qwen3:4b")
    assert hit is not None and hit.answer == ANSWER and hit.model == "qwen3:4b"
    twin = job(prompt="  summarise THIS thread:\n\tVPN   drops.  ")
    assert cache.get(twin, "qwen3:4b") is not None
    # The stored key carries no words of the prompt.
    assert all(b"VPN" not in k and b"vpn" not in k for k in r.keys("*"))


@pytest.mark.parametrize(
    "other",
    [
        {"prompt": "Summarise this thread: VPN drops twice."},
        {"kind": "chat"},
        {"max_tokens": 64},
        {"json_output": True},
        {"metadata": {"temperature": "0.7"}},
        {"images": ["aGVsbG8="]},
        {
            "messages": [
                Message(role="system", content="Be brief."),
                Message(role="user", content="Summarise this thread: VPN drops."),
            ],
            "prompt": None,
        },
    ],
)
def test_anything_that_shapes_the_answer_is_in_the_key(r: fakeredis.FakeRedis, other: dict[str, Any]) -> None:
    cache = AnswerCache(r, fleet())
    cache.put(job(), "qwen3:4b", ANSWER)
    assert cache.get(job(**other), "qwen3:4b") is None
    assert cache.get(job(), "qwen3:8b") is None  # another model


def test_no_answer_crosses_privacy_levels(r: fakeredis.FakeRedis) -> None:
    cache = AnswerCache(r, fleet())
    cache.put(job(privacy="public"), "m", ANSWER)
    assert cache.get(job(privacy="internal"), "m") is None
    assert cache.get(job(privacy="public"), "m") is not None
    assert cache_key(job(privacy="public"), "m") != cache_key(job(privacy="internal"), "m")


def test_confidential_answers_are_never_stored(r: fakeredis.FakeRedis) -> None:
    cache = AnswerCache(r, fleet())
    cache.put(job(privacy="confidential"), "m", ANSWER)
    assert r.keys("*") == []
    assert cache.get(job(privacy="confidential"), "m") is None


def test_a_job_that_asks_for_no_cache_is_never_served_nor_stored(r: fakeredis.FakeRedis) -> None:
    cache = AnswerCache(r, fleet())
    cache.put(job(cache=False), "m", ANSWER)
    assert r.keys("*") == []
    cache.put(job(), "m", ANSWER)
    assert cache.get(job(cache=False), "m") is None
    assert cache.get(job(), "m") is not None


def test_disabled_cache_and_rules_jobs(r: fakeredis.FakeRedis) -> None:
    off = AnswerCache(r, fleet(enabled=False))
    off.put(job(), "m", ANSWER)
    assert r.keys("*") == [] and off.get(job(), "m") is None
    rules_job = Job(kind="dedupe", input={"items": ["a", "a"]})
    AnswerCache(r, fleet()).put(rules_job, None, ANSWER)
    assert r.keys("*") == []


def test_code_keeps_case_and_indentation(r: fakeredis.FakeRedis) -> None:
    cache = AnswerCache(r, fleet())
    code = job(kind="code", prompt="def Foo():\n    return 1\n")
    cache.put(code, "coder", ANSWER)
    assert cache.get(job(kind="code", prompt="def foo():\n    return 1\n"), "coder") is None
    assert cache.get(job(kind="code", prompt="def Foo():\nreturn 1\n"), "coder") is None
    assert cache.get(job(kind="code", prompt="def Foo():   \r\n    return 1"), "coder") is not None


def test_entries_expire_after_the_ttl(r: fakeredis.FakeRedis) -> None:
    cache = AnswerCache(r, fleet(ttl_s=1))
    cache.put(job(), "m", ANSWER)
    [key] = r.keys("*")
    assert 0 < r.ttl(key) <= 1
    time.sleep(1.1)
    assert cache.get(job(), "m") is None


def test_damaged_or_oversized_entries_are_misses(r: fakeredis.FakeRedis) -> None:
    cache = AnswerCache(r, fleet(), max_answer_bytes=500)
    cache.put(job(), "m", {"text": "x" * 1000})
    assert r.keys("*") == []
    r.set(cache.key(job(), "m"), b"not json")
    assert cache.get(job(), "m") is None
    assert r.keys("*") == []
