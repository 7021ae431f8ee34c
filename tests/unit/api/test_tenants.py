"""One producer never reads, attaches to or labels another producer's job.

Producers are the names behind the API tokens (``name:token``; beta has two tokens, a
rotation). Another producer's job id reads exactly as an unknown one, and submitting
under it is refused like any reused id: nothing says whose it is or what it holds.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH, KEYS, OTHER_AUTH, error_of
from tierfleet.api.tenants import DEFAULT, Owners, parse_tokens
from tierfleet.config import FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.errors import ConfigError
from tierfleet.jobs import Result, Status

ALPHA = OTHER_AUTH
BETA = AUTH
BETA_ROTATED = {"Authorization": f"Bearer {KEYS['beta-rotated']}"}
SECRET = "the merger closes on friday"
JOB = {"id": "alpha-1", "kind": "summary", "prompt": f"Summarize: {SECRET}",
       "privacy": "confidential"}


def _answered(client: TestClient, dispatcher: Dispatcher) -> None:
    assert client.post("/v1/jobs", json=JOB, headers=ALPHA).status_code == 202
    dispatcher.results.save(Result(job_id="alpha-1", status=Status.SUCCEEDED, kind="summary",
                                   text=SECRET, output=SECRET, tier="local-mac"))


def _without_id(resp: Any) -> str:
    return str(resp.text).replace("alpha-1", "X").replace("never-was", "X")


def test_another_producers_job_reads_as_an_unknown_one(
        client: TestClient, dispatcher: Dispatcher) -> None:
    _answered(client, dispatcher)

    mine = client.get("/v1/jobs/alpha-1", headers=ALPHA)
    theirs = client.get("/v1/jobs/alpha-1", headers=BETA)
    unknown = client.get("/v1/jobs/never-was", headers=BETA)

    assert mine.status_code == 200 and mine.json()["text"] == SECRET
    assert theirs.status_code == 404 and SECRET not in theirs.text
    assert _without_id(theirs) == _without_id(unknown)  # the same answer, word for word


def test_submitting_under_another_producers_id_is_refused_and_attaches_to_nothing(
        client: TestClient, dispatcher: Dispatcher) -> None:
    _answered(client, dispatcher)

    same = client.post("/v1/jobs", json=JOB, headers=BETA)
    assert same.status_code == 422 and error_of(same)["param"] == "id"
    assert SECRET not in same.text

    batch = client.post("/v1/jobs/batch", headers=BETA, json={"jobs": [
        {"id": "beta-1", "kind": "dedupe", "input": {"items": ["a"]}}, JOB]})
    assert batch.status_code == 422 and error_of(batch)["param"] == "jobs[1].id"
    # All or nothing: the batch's first job was not enqueued either.
    assert client.get("/v1/jobs/beta-1", headers=BETA).status_code == 404

    chat = client.post("/v1/chat/completions", headers={**BETA, "X-Tierfleet-Job-Id": "alpha-1"},
                       json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 422 and error_of(chat)["param"] == "id"
    assert SECRET not in chat.text
    assert dispatcher.results.get("alpha-1").text == SECRET  # untouched


def test_feedback_on_another_producers_job_answers_as_for_a_job_without_an_answer(
        client: TestClient, dispatcher: Dispatcher) -> None:
    _answered(client, dispatcher)
    theirs = client.post("/v1/jobs/alpha-1/feedback", json={"good": False}, headers=BETA)
    unknown = client.post("/v1/jobs/never-was/feedback", json={"good": False}, headers=BETA)
    assert theirs.status_code == unknown.status_code == 404
    assert _without_id(theirs) == _without_id(unknown)


def test_a_producers_tokens_share_its_jobs_and_idempotency_keys(client: TestClient) -> None:
    job = {"id": "beta-2", "kind": "dedupe", "input": {"items": ["a", "a"]}}
    assert client.post("/v1/jobs", json=job, headers=BETA).status_code == 202
    assert client.get("/v1/jobs/beta-2", headers=BETA_ROTATED).status_code == 200
    assert client.post("/v1/jobs", json=job, headers=BETA_ROTATED).status_code == 202

    body = {"model": "tier:local-gpu", "messages": [{"role": "user", "content": "hello"}],
            "tierfleet": {"wait_s": 0.2}}  # no worker here: each try ends in a 504 naming its job
    first = client.post("/v1/chat/completions", json=body,
                        headers={**BETA, "Idempotency-Key": "k-9"})
    rotated = client.post("/v1/chat/completions", json=body,
                          headers={**BETA_ROTATED, "Idempotency-Key": "k-9"})
    assert first.status_code == rotated.status_code == 504
    assert error_of(first)["job_id"] == error_of(rotated)["job_id"]


def test_jobs_submitted_outside_the_api_belong_to_the_default_producer(
        core_config: FleetConfig) -> None:
    owners = Owners(fakeredis.FakeRedis(decode_responses=True), core_config)
    assert owners.owns(DEFAULT, "from-the-cli") and not owners.owns("alpha", "from-the-cli")
    assert owners.claim("alpha", ["a1", "a1"]) == [True, True]
    assert owners.claim("beta", ["a1", "b1"]) == [False, True]
    assert owners.owns("alpha", "a1") and not owners.owns(DEFAULT, "a1")


def test_token_entries_name_their_producer() -> None:
    assert parse_tokens(["bare-token", " alpha:t1 ", "alpha:t2", ""]) == {
        "bare-token": DEFAULT, "t1": "alpha", "t2": "alpha"}
    for bad in (["no name:secret-1"], ["alpha:"], ["alpha:same", "beta:same"]):
        with pytest.raises(ConfigError) as info:
            parse_tokens(bad)
        assert "secret-1" not in str(info.value) and "same" not in str(info.value)


def test_fleet_status_lists_only_the_callers_own_parked_and_dead_jobs(
        client: TestClient, dispatcher: Dispatcher) -> None:
    from tierfleet.envelope import Delivery
    from tierfleet.jobs import Job, Kind, Route
    from tierfleet.store import Parking

    parking = Parking(dispatcher.redis, dispatcher.config)
    assert client.post("/v1/jobs", json=JOB, headers=ALPHA).status_code == 202
    for job_id in ("alpha-1", "from-the-cli"):
        d = Delivery(job=Job(id=job_id, prompt="hi", kind=Kind.CHAT),
                     route=Route(tier="local-mac", kind=Kind.CHAT))
        if job_id == "alpha-1":
            parking.park(d, 0, "down")
        else:
            parking.bury(d, "gave up")

    def listed(headers: dict[str, str]) -> tuple[list[str], list[str]]:
        st = client.get("/v1/status", headers=headers).json()
        return [e["id"] for e in st["parked"]], [e["id"] for e in st["dead_letters"]]

    assert listed(ALPHA) == (["alpha-1"], [])
    assert listed(BETA) == ([], [])
